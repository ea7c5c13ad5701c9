"""The evaluation report: report.json, contact sheets, matplotlib plots and report.html.

report.html is self-contained (inline CSS, no scripts, nothing fetched) and refers to its
images by relative paths (sheets/*.png, plots/*.png), so the whole report folder can be moved,
zipped or served as is. Every piece of text from the suite or the user is HTML-escaped.
In report.json non-finite numbers (an identical frame 0 has PSNR inf) are written as the
strings "inf", "-inf" and "nan", keeping the file strict JSON.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from kinetograph.errors import OutputError
from kinetograph.eval.clips import check_video, fit_image
from kinetograph.eval.motion import MotionClass

# --- contact sheets -------------------------------------------------------------------------


def contact_sheet(
    video: np.ndarray,
    conditioning: np.ndarray | None = None,
    max_frames: int = 8,
    thumb_height: int = 96,
) -> np.ndarray:
    """One row of evenly spaced frames (first and last included), labelled with their index,
    preceded by the conditioning image ("input") when given. uint8 (H, W, 3)."""
    check_video(video)
    t, h, w, _ = video.shape
    picks = np.unique(np.linspace(0, t - 1, min(max_frames, t)).round().astype(int))
    tw = max(1, round(w * thumb_height / h))
    tiles: list[tuple[str, np.ndarray]] = []
    if conditioning is not None:
        tiles.append(("input", fit_image(conditioning, (h, w))))
    tiles += [(f"t={i}", video[i]) for i in picks]
    label_h, gap = 14, 2
    sheet = Image.new(
        "RGB", (len(tiles) * (tw + gap) + gap, thumb_height + label_h + gap), (24, 24, 24)
    )
    draw = ImageDraw.Draw(sheet)
    for k, (label, frame) in enumerate(tiles):
        x = gap + k * (tw + gap)
        thumb = Image.fromarray(frame).resize((tw, thumb_height), Image.Resampling.LANCZOS)
        sheet.paste(thumb, (x, label_h))
        draw.text((x + 2, 1), label, fill=(230, 230, 230))
    return np.asarray(sheet)


def save_png(path: Path, image: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e}") from e


# --- plots ----------------------------------------------------------------------------------


def _figure(width: float = 6.0, height: float = 4.0):  # -> matplotlib Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # no pyplot: no global state, no display needed
    return fig


def plot_bucket_vs_motion(cases: Sequence[dict], path: Path) -> None:
    """Scatter of motion bucket vs measured flow magnitude, one colour per expected class,
    with each group's (same image, prompt, seed) cases joined by a line."""
    fig = _figure()
    ax = fig.add_subplot()
    classes = [c.value for c in MotionClass] + [None]
    colours = dict(zip(classes, [f"C{i}" for i in range(len(classes))]))
    groups: dict[str, list[dict]] = {}
    for c in cases:
        groups.setdefault(c["group"], []).append(c)
    for members in groups.values():
        members = sorted(members, key=lambda c: c["motion_bucket_id"])
        ax.plot(
            [c["motion_bucket_id"] for c in members],
            [c["metrics"]["flow_magnitude"] for c in members],
            color=colours[members[0]["expected_motion"]],
            alpha=0.35,
            linewidth=1,
        )
    for cls in classes:
        members = [c for c in cases if c["expected_motion"] == cls]
        if members:
            ax.scatter(
                [c["motion_bucket_id"] for c in members],
                [c["metrics"]["flow_magnitude"] for c in members],
                color=colours[cls],
                label=cls or "no expectation",
                s=18,
            )
    ax.set_xlabel("motion_bucket_id")
    ax.set_ylabel("mean optical flow (px/frame)")
    ax.set_title("Motion bucket vs measured motion")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def plot_class_accuracy(per_class: dict[str, dict], path: Path) -> None:
    """Bar chart of motion-class accuracy per expected (prompt) class, with case counts."""
    fig = _figure()
    ax = fig.add_subplot()
    names = [c.value for c in MotionClass if c.value in per_class]
    accuracy = [per_class[n]["accuracy"] for n in names]
    bars = ax.bar(names, accuracy, color="C0")
    for bar, n in zip(bars, names):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height() + 0.02,
            f"{per_class[n]['correct']}/{per_class[n]['n']}",
            ha="center",
            fontsize=8,
        )
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.set_title("Camera-motion accuracy per prompt class")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)


def plot_flicker(cases: Sequence[dict], path: Path) -> None:
    """Histograms of luminance flicker and high-frequency flicker over the evaluated videos."""
    fig = _figure(8.0, 3.5)
    for k, (key, label) in enumerate(
        [
            ("flicker_luminance", "luminance flicker (gray levels/frame)"),
            ("flicker_high_frequency", "high-frequency flicker (relative/frame)"),
        ]
    ):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.hist([c["metrics"][key] for c in cases], bins=20, color=f"C{k + 2}")
        ax.set_xlabel(label)
        ax.set_ylabel("videos")
        ax.grid(alpha=0.3)
    fig.suptitle("Flicker distribution")
    fig.tight_layout()
    fig.savefig(path)


def write_plots(report: dict, out: Path) -> dict[str, str]:
    """The three plots under out/plots; returns {name: relative path}. Needs matplotlib."""
    cases = [c for c in report["cases"] if c["status"] == "ok"]
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = {}
    if cases:
        plot_bucket_vs_motion(cases, plots / "bucket_vs_motion.png")
        written["bucket_vs_motion"] = "plots/bucket_vs_motion.png"
        plot_flicker(cases, plots / "flicker.png")
        written["flicker"] = "plots/flicker.png"
    per_class = report["summary"]["control"]["per_class"]
    if per_class:
        plot_class_accuracy(per_class, plots / "class_accuracy.png")
        written["class_accuracy"] = "plots/class_accuracy.png"
    return written


# --- json -----------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """Report data as strict JSON: non-finite floats as strings, numpy scalars as Python."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --- html -----------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f2f2f2;text-align:left}.ok{color:#186a18}.bad{color:#a01818}.muted{color:#777}
img.sheet{max-width:100%;height:auto}img.plot{max-width:48%;margin:4px}code{background:#f4f4f4}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # "inf" etc. from json_safe
        return _e(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def _table(rows: Sequence[tuple[str, str]]) -> str:
    return (
        "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    )


def render_html(report: dict) -> str:
    """The report page; `report` is the json_safe dict written to report.json."""
    s = report["summary"]
    ctrl = s["control"]
    head = [
        ("suite", _e(f"{report['suite']['name']} ({report['suite']['n_cases']} cases)")),
        ("source", _e(report["source"])),
        ("checkpoint", _e(report["checkpoint"] or "-")),
        ("created", _e(report["created"])),
        ("kinetograph", _e(report["kinetograph_version"])),
        (
            "videos evaluated",
            _e(f"{s['n_evaluated']} (missing {s['n_missing']}, failed {s['n_failed']})"),
        ),
    ]
    means = [(k, _num(v)) for k, v in s["mean"].items()]
    control = [
        ("motion-class accuracy", _e(f"{_num(ctrl['accuracy'])} over {ctrl['n_scored']} cases")),
        ("direction only (moves under the static threshold read by their direction)",
         _num(ctrl.get("direction_accuracy"))),
        ("Spearman(bucket, magnitude), all cases", _num(ctrl["spearman"])),
        (
            "Spearman within groups (mean)",
            _e(f"{_num(ctrl['spearman_within'])} over {ctrl['n_groups']} groups"),
        ),
    ]
    extras = []
    for key, title in (("fvd", "FVD"), ("clip", "CLIP")):
        block = report[key]
        if block["status"] == "ok":
            extras.append(
                (
                    title,
                    _e(
                        ", ".join(
                            f"{k}={_num(v) if not isinstance(v, str) else v}"
                            for k, v in block.items()
                            if k != "status"
                        )
                    ),
                )
            )
        else:
            extras.append((title, f"<span class='muted'>skipped: {_e(block['reason'])}</span>"))

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{_e('kinetograph eval: ' + report['suite']['name'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e('kinetograph eval: ' + report['suite']['name'])}</h1>",
        f"<p>{_e(report['suite']['description'])}</p>",
        _table(head),
        "<h2>Summary</h2>",
        _table(means),
        _table(control),
        _table(extras),
    ]
    if ctrl["confusion"]:
        measured = [c.value for c in MotionClass]
        rows = "".join(
            f"<tr><th>{_e(exp)}</th>"
            + "".join(f"<td>{row.get(m, 0)}</td>" for m in measured)
            + "</tr>"
            for exp, row in ctrl["confusion"].items()
        )
        parts.append(
            "<h3>Confusion (rows: prompt class, columns: measured)</h3><table><tr><th></th>"
            + "".join(f"<th>{_e(m)}</th>" for m in measured)
            + f"</tr>{rows}</table>"
        )
    if report["notes"]:
        parts.append(
            "<h3>Notes</h3><ul>" + "".join(f"<li>{_e(n)}</li>" for n in report["notes"]) + "</ul>"
        )
    if report["plots"]:
        parts.append(
            "<h2>Plots</h2>"
            + "".join(
                f"<img class='plot' src='{_e(p)}' alt='{_e(name)}'>"
                for name, p in report["plots"].items()
            )
        )

    parts.append("<h2>Cases</h2>")
    for c in report["cases"]:
        title = (
            f"{c['id']}: {c['prompt']!r}, motion bucket {c['motion_bucket_id']}, seed {c['seed']}"
        )
        parts.append(f"<h3 id='{_e(c['id'])}'>{_e(title)}</h3>")
        if c["status"] != "ok":
            parts.append(f"<p class='bad'>{_e(c['status'])}: {_e(c['error'])}</p>")
            continue
        m = c["metrics"]
        verdict = (
            "-"
            if c["correct"] is None
            else (
                "<span class='ok'>match</span>"
                if c["correct"]
                else "<span class='bad'>mismatch</span>"
            )
        )
        rows = [
            (
                "expected / measured motion",
                _e(f"{c['expected_motion'] or '-'} / {c['measured_motion']}") + f" ({verdict})",
            ),
            *([("camera head read", _e(f"{c['camera_reading']['move']} ({_num(c['camera_reading']['p'], 2)})"
                                        + (f", but no camera move named (gate {_num(c['camera_reading']['named'], 2)})"
                                           if c['camera_reading'].get('named', 1.0) < 0.5 else "")
                                        + f"; sampled with {c['camera_reading']['sampled_prompt']!r}"
                                        + (f", from the moved image at {c['camera_reading']['camera_prior']:.0%} "
                                           "(camera prior)" if c['camera_reading'].get('camera_prior') else "")))]
              if c.get("camera_reading") else []),
            ("flow magnitude (px/frame)", _num(m["flow_magnitude"])),
            ("translation dx, dy (px/frame)", _e(", ".join(_num(v) for v in m["translation"]))),
            ("divergence (1/frame)", _num(m["divergence"])),
            ("PSNR (dB) / SSIM frame 0", _e(f"{_num(m['psnr'], 2)} / {_num(m['ssim'])}")),
            (
                "flicker luminance / high-freq",
                _e(f"{_num(m['flicker_luminance'])} / {_num(m['flicker_high_frequency'])}"),
            ),
            (
                "jitter luminance / high-freq",
                _e(
                    f"{_num(m['flicker_luminance_jitter'])} / "
                    f"{_num(m['flicker_high_frequency_jitter'])}"
                ),
            ),
            ("warping error", _num(m["warping_error"])),
            ("carry-over (dB, last frame vs frame 0 moved)", _num(m.get("carry_over"), 2)),
            ("frames, size", _e(f"{m['frames']}, {m['width']}x{m['height']}")),
        ]
        if c.get("clip_score") is not None:
            rows.append(("CLIP score", _num(c["clip_score"])))
        if c.get("clip_consistency") is not None:
            rows.append(("CLIP frame consistency", _num(c["clip_consistency"])))
        parts.append(f"<img class='sheet' src='{_e(c['contact_sheet'])}' alt='{_e(c['id'])}'>")
        if c.get("video"):
            parts.append(f"<p><a href='{_e(c['video'])}'>{_e(c['video'])}</a></p>")
        parts.append(_table(rows))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """Plots (when matplotlib is installed), report.json and report.html under `out`."""
    try:
        import matplotlib  # noqa: F401 - probe only
    except ImportError:
        report["plots"] = {}
        report["notes"].append(
            "plots skipped: matplotlib is not installed (pip install matplotlib)"
        )
    else:
        report["plots"] = write_plots(report, out)
    safe = json_safe(report)
    json_path, html_path = out / "report.json", out / "report.html"
    try:
        json_path.write_text(json.dumps(safe, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        html_path.write_text(render_html(safe), encoding="utf-8")
    except OSError as e:
        raise OutputError(f"cannot write the report under {out}: {e}") from e
    return json_path, html_path
