"""``spn train``: train the restoration GAN from a TOML config (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app
from ._common import die, err


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", help="TOML file with every hyper-parameter and the seed.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (checkpoints, log); re-run to resume.")],
    steps: Annotated[int | None, typer.Option(help="Override the config's number of steps.")] = None,
    validation: Annotated[
        Path | None,
        typer.Option(help="Dresden-style folder with ff-jpg/ and nat-jpg/ for validation PCE (units ending _1)."),
    ] = None,
    val_quality: Annotated[list[int] | None, typer.Option(help="Validation qualities [default: 50 30].")] = None,
    val_crop: Annotated[int, typer.Option(help="Validation centre crop (square).")] = 1024,
):
    """Train the quality-conditioned restoration GAN; checkpoints and EMA weights go to OUT.

    Training pairs are simulated (PRNU in the raw domain, demosaicing, tone curve, camera JPEG,
    re-compression at a curriculum of qualities). With --validation, the EMA generator's median
    matching PCE (classic vs restored) on the validation units is logged, and the best EMA
    weights are kept as OUT/best.pt.
    """
    from ..training import Trainer, load_config

    try:
        cfg = load_config(config)
        if steps is not None:
            cfg.steps = steps
    except (OSError, ValueError) as exc:
        die(f"{config}: {exc}")
    validate = None
    if validation is not None:
        from ..evaluation import ValidationSet

        err.print("building the validation set (fingerprints and re-compressed probes) ...")
        validate = ValidationSet(
            validation / "ff-jpg", validation / "nat-jpg", "_1", tuple(val_quality or (50, 30)), (val_crop, val_crop)
        )
    try:
        trainer = Trainer(cfg, out, validate)
    except ValueError as exc:
        die(str(exc))
    from ._common import progress

    with progress(cfg.steps, "train") as bar:
        task = bar.add_task("train", total=cfg.steps, completed=trainer.step, rate="")

        def on_step(step, parts):
            bar.update(task, completed=step, rate=f"corr {parts['corr']:.4f} l1 {parts['l1']:.4f} d {parts['d']:.3f}")
            if not bar.console.is_terminal and step % 50 == 0:
                err.print(f"step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in parts.items()))

        result = trainer.run(on_step)
    err.print(f"done: {trainer.step} steps; EMA weights in {out / 'ema.pt'}; last validation {result}")
