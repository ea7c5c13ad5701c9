"""Command line for data: `kinetograph curate ...` and `kinetograph data build ...`.

`app` carries both commands; the main CLI mounts `curate_command` as `kinetograph curate` and
`app` (or `build_command`) under `kinetograph data`. Errors are raised as KinetographError and
printed as one line by the main CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(name="data", help="Curate videos and build training datasets.", no_args_is_help=True, add_completion=False)


def curate_command(
    inputs: Annotated[Path, typer.Argument(help="Folder of videos, or a manifest (.jsonl/.csv/.parquet) with path[,caption] columns.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (re-run with the same one to resume).")],
    engine: Annotated[str, typer.Option(help="process (a local process pool) or ray (Ray Data).")] = "process",
    workers: Annotated[int, typer.Option(help="Processes, or CPUs of a local Ray.")] = 2,
    ray_address: Annotated[str | None, typer.Option(help="Address of a running Ray cluster (default: start a local one).")] = None,
    min_clip_s: Annotated[float, typer.Option(help="Shorter shots give no clip.")] = 1.0,
    max_clip_s: Annotated[float, typer.Option(help="Longer shots are split into equal clips of at most this.")] = 5.0,
    cut_threshold: Annotated[float, typer.Option(help="Content score (0..255) that is always a cut.")] = 27.0,
    min_width: Annotated[int, typer.Option(help="Minimum source width (0: off).")] = 64,
    min_height: Annotated[int, typer.Option(help="Minimum source height (0: off).")] = 64,
    min_motion: Annotated[float, typer.Option(help="Drop near-static clips below this motion score, % width/s (0: off).")] = 0.3,
    max_motion: Annotated[float | None, typer.Option(help="Drop clips above this motion score.")] = None,
    max_black: Annotated[float, typer.Option(help="Max share of black frames (1: off).")] = 0.5,
    max_blank: Annotated[float, typer.Option(help="Max share of flat single-colour frames (1: off).")] = 0.5,
    max_text: Annotated[float | None, typer.Option(help="Drop text-heavy clips above this text score (heuristic; try 0.03).")] = None,
    dedupe: Annotated[bool, typer.Option(help="Drop near-duplicate clips (perceptual hash).")] = True,
    dedupe_distance: Annotated[int, typer.Option(help="Max differing bits (of 64) for a duplicate.")] = 10,
    scorer: Annotated[str | None, typer.Option(help="Local scoring model: FILE.py:FUNC, MODULE:FUNC or MODEL.pt (TorchScript).")] = None,
    min_score: Annotated[float | None, typer.Option(help="Drop clips the scorer rates below this.")] = None,
    require_caption: Annotated[bool, typer.Option(help="A clip without caption fails (it is still listed).")] = False,
    calibrate: Annotated[bool, typer.Option(help="Fit the motion bucket map to this corpus (quantiles).")] = False,
    bucket_map: Annotated[Path | None, typer.Option(help="Reuse this motion_buckets.json instead.")] = None,
    shards: Annotated[int | None, typer.Option(help="Also write kept clips as WebDataset shards at this short side.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Split videos at cuts, measure and filter clips, and write manifest.jsonl + motion_buckets.json."""
    from kinetograph.data.curation.filters import FilterConfig
    from kinetograph.data.curation.pipeline import AnalysisConfig, CurateConfig, curate
    from kinetograph.data.curation.scenes import SceneConfig
    from kinetograph.errors import InputError

    if min_score is not None and scorer is None:
        raise InputError("--min-score needs --scorer; pass the scoring model too")
    cfg = CurateConfig(
        analysis=AnalysisConfig(
            min_clip_s=min_clip_s, max_clip_s=max_clip_s, scene=SceneConfig(threshold=cut_threshold), scorer=scorer
        ),
        filters=FilterConfig(
            min_width=min_width or None, min_height=min_height or None, min_duration_s=min_clip_s,
            min_motion=min_motion or None, max_motion=max_motion,
            max_black_fraction=None if max_black >= 1 else max_black,
            max_blank_fraction=None if max_blank >= 1 else max_blank,
            max_text_score=max_text, dedupe=dedupe, dedupe_distance=dedupe_distance,
            min_score=min_score, require_caption=require_caption,
        ),
        calibrate=calibrate, bucket_map=str(bucket_map) if bucket_map else None,
        engine=engine, workers=workers, ray_address=ray_address, shard_size=shards, progress=progress,
    )
    r = curate(inputs, out, cfg)
    typer.echo(
        f"{r.sources} sources ({r.analysed} analysed, {r.errors} failed): {r.clips} clips, {r.kept} kept, "
        f"{r.missing_captions} without caption, {r.seconds:.1f}s -> {r.out / 'manifest.jsonl'}"
    )


def build_command(
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")],
    recipe: Annotated[str, typer.Option(help="default, or tiny (for smoke tests).")] = "default",
    seed: Annotated[int, typer.Option(help="Seed of the generated camera moves and captions.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes for rendering the camera clips and curating the real videos.")] = 2,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Write the project's training data (real clips, camera moves, images) as a manifest + shards."""
    from kinetograph.data.build import build

    meta = build(out, recipe, seed=seed, workers=workers, progress=progress)
    c = meta["counts"]
    typer.echo(f"{c['video']} real clips, {c['camera']} camera clips, {c['image']} images in {meta['seconds']}s -> {out / 'manifest.jsonl'}")


app.command("curate")(curate_command)
app.command("build")(build_command)
