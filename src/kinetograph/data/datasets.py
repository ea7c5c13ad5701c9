"""Training datasets: a manifest plus WebDataset-style shards -> (frames, caption, conditioning).

A dataset folder (written by `kinetograph data build` or `curate --shards`) holds
`manifest.jsonl`, one row per sample with its `shard` (relative path), `key`, `kind` ("video",
"camera" or "image"), `caption`, `fps` and `motion_bucket`, and the tar shards themselves.

`ClipDataset` is a map-style torch Dataset: item i decodes one sample and draws a random window of
`num_frames` frames at `fps` (a frame stride, not interpolation), resizes it to cover
`height x width` and crops. Images are 1-frame clips with random crops and flips. Videos are never
flipped: a flip would turn "pan left" into a pan right without changing the caption.
Randomness comes from (seed, epoch, index), so a run is reproducible with any number of workers.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from kinetograph.data.camera_motion import fixed_point, paraphrase
from kinetograph.data.curation.manifest import read_jsonl
from kinetograph.data.shards import Member, index_shard, read_member
from kinetograph.errors import InputError
from kinetograph.io.video import decode_mp4_bytes

KINDS = ("video", "camera", "image")


@dataclass(frozen=True)
class SampleConfig:
    num_frames: int = 14  # frames per clip (images always give 1)
    fps: float = 7.0  # target frame rate; a source slower than this is used at its own rate
    height: int = 256
    width: int = 256
    random_crop: bool = True  # False: centre crop (evaluation)
    flip_images: bool = True  # random horizontal flips, images only
    kinds: tuple[str, ...] = KINDS  # which sample kinds to serve
    require_caption: bool = False  # drop rows without caption (text-conditioned training)
    # Camera clips: a fresh caption for the clip's move each time it is served
    # (`camera_motion.paraphrase`), instead of the one fixed at build time.
    paraphrase_captions: bool = False


def sample_indices(num_src: int, src_fps: float, cfg: SampleConfig, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Frame indices of a random window at the target fps, and the fps actually obtained.

    The stride is src_fps / fps (>= 1). When the clip is too short for num_frames at that stride,
    the stride shrinks to fit; when it is shorter than num_frames, the last frame repeats.
    """
    step = max(1.0, src_fps / cfg.fps)
    if (cfg.num_frames - 1) * step + 1 > num_src:
        step = max(1.0, (num_src - 1) / max(cfg.num_frames - 1, 1))
    span = (cfg.num_frames - 1) * step
    start = rng.uniform(0, max(0.0, num_src - 1 - span))
    idx = np.minimum(np.round(start + step * np.arange(cfg.num_frames)).astype(int), num_src - 1)
    return idx, src_fps / step


def resize_crop(frames: np.ndarray, height: int, width: int, rng: np.random.Generator | None) -> np.ndarray:
    """Resize (t, h, w, 3) uint8 to cover (height, width) keeping aspect, then crop (random or centre)."""
    t, h, w, _ = frames.shape
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = np.stack([cv2.resize(f, (nw, nh), interpolation=interp) for f in frames])  # (t, nh, nw, 3)
    if rng is None:
        y, x = (nh - height) // 2, (nw - width) // 2
    else:
        y, x = int(rng.integers(nh - height + 1)), int(rng.integers(nw - width + 1))
    return resized[:, y : y + height, x : x + width]


class ClipDataset(torch.utils.data.Dataset):
    """Samples of a dataset folder (or a manifest.jsonl inside one) as training-ready tensors.

    Item: {"video": (t, 3, h, w) float32 in [-1, 1], "caption": str ("" if none), "fps": float
    (after sampling), "motion_bucket": int, "kind": str, "key": str}.
    """

    def __init__(self, root: str | Path, cfg: SampleConfig = SampleConfig(), seed: int = 0) -> None:
        root = Path(root)
        manifest = root if root.suffix == ".jsonl" else root / "manifest.jsonl"
        self.root, self.cfg, self.seed, self.epoch = manifest.parent, cfg, seed, 0
        rows = [r for r in read_jsonl(manifest) if r.get("shard") and r.get("kind", "video") in cfg.kinds]
        if cfg.require_caption:
            rows = [r for r in rows if r.get("caption")]
        if not rows:
            raise InputError(f"{manifest}: no samples of kinds {cfg.kinds} with shards; build with `kinetograph data build`")
        if cfg.paraphrase_captions and any(r.get("kind") == "camera" and "subject" not in r for r in rows):
            raise InputError(f"{manifest}: camera clips without a subject (built by an older version); rebuild it "
                             "with `kinetograph data build`, or set data.paraphrase_captions = false")
        self.rows = rows
        self._index: dict[str, dict[str, dict[str, Member]]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """New random windows/crops each epoch, still reproducible."""
        self.epoch = epoch

    def _member(self, row: dict) -> tuple[Path, str, Member]:
        shard = str(row["shard"])
        if shard not in self._index:
            self._index[shard] = index_shard(self.root / shard)
        files = self._index[shard].get(row["key"] if "key" in row else row["id"])
        if files is None:
            raise InputError(f"{shard}: sample {row.get('key', row.get('id'))} missing; rebuild the dataset")
        ext = "mp4" if "mp4" in files else "png"
        return self.root / shard, ext, files[ext]

    def __getitem__(self, i: int) -> dict:
        row, cfg = self.rows[i], self.cfg
        rng = np.random.default_rng([self.seed, self.epoch, i])
        path, ext, member = self._member(row)
        data = read_member(path, member)
        if ext == "mp4":
            frames, src_fps = decode_mp4_bytes(data)  # (t, h, w, 3)
            idx, fps = sample_indices(len(frames), src_fps, cfg, rng)
            frames = frames[idx]
        else:
            frames = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[None]  # (1, h, w, 3)
            fps = cfg.fps
        frames = resize_crop(frames, cfg.height, cfg.width, rng if cfg.random_crop else None)
        if ext == "png" and cfg.flip_images and rng.random() < 0.5:
            frames = frames[:, :, ::-1]
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (t, 3, h, w)
        caption = row.get("caption") or ""
        if cfg.paraphrase_captions and row.get("kind") == "camera":
            # its own generator, so that the windows and crops above stay those without paraphrases
            move = row["move"]
            caption = paraphrase(move["kind"], move["speed_class"], row["subject"], np.random.default_rng([self.seed, self.epoch, i, 1]))
        return {
            "video": video,
            "caption": caption,
            "fps": float(fps),
            "motion_bucket": int(row.get("motion_bucket") or 0),
            "kind": row.get("kind", "video"),
            "key": row.get("key", row.get("id")),
            # where a training window must be centred for the caption to stay true (zooms), or None
            "window_centre": fixed_point(row["move"]["kind"]) if row.get("kind") == "camera" and "move" in row else None,
        }


def collate(items: list[dict]) -> dict:
    """Stack videos (b, t, 3, h, w); lists for captions/keys/kinds/window centres; tensors for fps and buckets."""
    return {
        "video": torch.stack([it["video"] for it in items]),
        "caption": [it["caption"] for it in items],
        "fps": torch.tensor([it["fps"] for it in items]),
        "motion_bucket": torch.tensor([it["motion_bucket"] for it in items]),
        "kind": [it["kind"] for it in items],
        "key": [it["key"] for it in items],
        "window_centre": [it.get("window_centre") for it in items],
    }


def load_meta(root: str | Path) -> dict:
    """The dataset's dataset.json (recipe, counts, bucket map path), if it has one."""
    p = Path(root) / "dataset.json"
    return json.loads(p.read_text()) if p.is_file() else {}
