"""`kinetograph train --stage vae|image|video|finetune --config FILE [--resume] [--set k=v ...]`.

`train_command` is the command; `app` carries it alone, so `python -m kinetograph.training.cli`
runs it directly (that is what torchrun launches):

    torchrun --nproc_per_node 2 -m kinetograph.training.cli --stage video --config configs/tiny_video.toml
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from kinetograph.errors import KinetographError

app = typer.Typer(name="train", help="Train or finetune a model.", add_completion=False)


@app.command("train")
def train_command(
    stage: Annotated[str, typer.Option(help="vae, image, video or finetune.")],
    config: Annotated[Path, typer.Option(help="TOML config (see configs/).")],
    resume: Annotated[bool, typer.Option(help="Continue the run in run.out_dir from its latest checkpoint.")] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. --set optim.lr=3e-4 --set run.out_dir='\"runs/x\"'."),
    ] = None,
) -> None:
    """Train one stage; checkpoints, metrics, validation videos and the export go to run.out_dir."""
    from kinetograph.training.config import load_config
    from kinetograph.training.loop import train

    try:
        cfg = load_config(config, stage=stage, overrides=set_ or [])
        result = train(cfg, resume=resume)
    except KinetographError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    if os.environ.get("RANK", "0") != "0":
        return
    if result.losses:
        last = max(result.losses)
        typer.echo(f"step {result.step}: loss {result.losses[last]:.5f}")
    for path in result.exports:
        typer.echo(f"wrote {path}")


def export_command(
    run_dir: Annotated[Path, typer.Argument(help="The run's folder (its run.out_dir).")],
    step: Annotated[int | None, typer.Option(help="Checkpoint step (default: the latest).")] = None,
    weights: Annotated[str, typer.Option(help="ema (the run's EMA) or model (the raw trained weights).")] = "ema",
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output folder (default RUN_DIR/export/step-N).")] = None,
) -> None:
    """Export a checkpoint of a training run as a model file, while the run goes on or after it ended."""
    from kinetograph.training.loop import export_checkpoint

    try:
        paths = export_checkpoint(run_dir, step=step, weights=weights, out=out)
    except KinetographError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    for path in paths:
        typer.echo(f"wrote {path}")


if __name__ == "__main__":
    app()
