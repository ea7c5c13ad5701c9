"""Captions for curated clips: from a manifest column, else a sidecar file next to the video.

Sidecars, first found wins: `<video stem>.txt` or `.caption` (the whole text), or `<stem>.json`
with a "caption" key. A clip with no caption keeps `caption: null` and `caption_source:
"missing"` in the manifest and is listed in `missing_captions.txt`; it is never dropped silently
(text-conditioned training needs captions; image-only training does not).
"""

from __future__ import annotations

import json
from pathlib import Path

SIDECAR_SUFFIXES = (".txt", ".caption", ".json")


def sidecar_caption(video: str | Path) -> tuple[str | None, str]:
    """(caption or None, where it came from: "sidecar:<name>" or "missing")."""
    video = Path(video)
    for suffix in SIDECAR_SUFFIXES:
        side = video.with_suffix(suffix)
        if not side.is_file():
            continue
        try:
            text = side.read_text(encoding="utf-8")
            caption = json.loads(text).get("caption") if suffix == ".json" else text
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            continue  # an unreadable sidecar is as good as none; the clip is reported missing
        caption = " ".join(str(caption).split()) if caption else ""
        if caption:
            return caption, f"sidecar:{side.name}"
    return None, "missing"


def resolve_caption(video: str | Path, manifest_caption: str | None) -> tuple[str | None, str]:
    """A manifest column beats a sidecar file: the user wrote it for this run."""
    if manifest_caption is not None and str(manifest_caption).strip():
        return " ".join(str(manifest_caption).split()), "manifest"
    return sidecar_caption(video)
