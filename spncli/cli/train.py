"""``spn train``: train the restoration GAN from a TOML config (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import app
from ._common import die, err


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", help="TOML file with every hyper-parameter and the seed.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (checkpoints, log); re-run to resume.")],
    steps: Annotated[int | None, typer.Option(help="Override the config's number of steps.")] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, TOML syntax: --set adversarial_weight=0 (repeatable)."),
    ] = None,
    validation: Annotated[
        Path | None,
        typer.Option(
            help="Dresden-style folder with ff-jpg/ and nat-jpg/ for validation PCE: v1 on the units ending _1, "
            "v2 on the selection units ending _0, per unit (leave-one-unit-out choice)."
        ),
    ] = None,
    val_quality: Annotated[list[int] | None, typer.Option(help="Validation qualities [default: 50 30].")] = None,
    val_crop: Annotated[int, typer.Option(help="Validation centre crop (square).")] = 1024,
    card_name: Annotated[
        str | None, typer.Option(help="Name of the model card written in OUT [default: spn-restore-ARCH-candidate].")
    ] = None,
):
    """Train the quality-conditioned restoration GAN; checkpoints and EMA weights go to OUT.

    Training pairs are simulated (PRNU in the raw domain, demosaicing, tone curve, camera JPEG,
    re-compression at a curriculum of qualities). With --validation, the EMA generator's median
    matching PCE (classic vs restored) on the validation units is logged, and the best EMA
    weights are kept as OUT/best.pt. At the end a model card OUT/NAME.json with its weights
    OUT/NAME.pt (best.pt if validated, else ema.pt) is written: `spn restore --model OUT/NAME.json`
    loads it. It is a candidate: it ships only if it wins on the selection split.
    """
    import tomllib

    from ..training import Trainer, load_config

    try:
        extra = {}
        for item in overrides or []:
            try:
                extra |= tomllib.loads(item.replace("=", " = ", 1))
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"--set {item!r} is not KEY=VALUE in TOML syntax ({exc})") from None
        cfg = load_config(config, extra | ({"steps": steps} if steps is not None else {}))
    except (OSError, ValueError, TypeError) as exc:
        die(f"{config}: {exc}")
    validate = None
    if validation is not None:
        err.print("building the validation set (fingerprints and re-compressed probes) ...")
        qualities, crop = tuple(val_quality or (50, 30)), (val_crop, val_crop)
        if cfg.architecture == "v2":
            from ..training import SelectionValidation

            validate = SelectionValidation(validation / "ff-jpg", validation / "nat-jpg", "_0", qualities, crop)
        else:
            from ..evaluation import ValidationSet

            validate = ValidationSet(validation / "ff-jpg", validation / "nat-jpg", "_1", qualities, crop)
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
    card = _write_card(trainer, out, card_name or f"spn-restore-{cfg.architecture}-candidate", config)
    err.print(f"done: {trainer.step} steps; EMA weights in {out / 'ema.pt'}; card {card}; last validation {result}")


def _write_card(trainer, out: Path, name: str, config: Path) -> Path:
    """The run's model card: weights (best.pt if validated, else ema.pt), config, validation, LOUO choice."""
    import json

    from .. import __version__
    from ..restoration import write_model_card
    from ..training import leave_one_unit_out

    weights = out / "best.pt" if (out / "best.pt").exists() else out / "ema.pt"
    log_file = out / "log.jsonl"
    log = [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.exists() else []
    validations = [r for r in log if "validation" in r]
    fields = {
        "status": "candidate (not shipped): ships only if it wins on the selection split (_0); reported on _1",
        "tool_version": __version__,
        "training": {
            "config_file": str(config),
            "config": trainer.cfg.as_dict(),
            "steps_done": trainer.step,
            "weights_from": weights.name,
            "device": str(trainer.device),
        },
        "validation": validations[-1]["validation"] if validations else None,
        "leave_one_unit_out": leave_one_unit_out(validations),
    }
    return write_model_card(weights, out, name, fields)
