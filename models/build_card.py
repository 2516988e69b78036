"""Ship a training run's weights with their model card (JSON for the tool, Markdown for people).

Run: python models/build_card.py RUN_DIR EVAL_JSON [--weights best|ema] [--name spn-restore-v1]
       [--table "LABEL=EVAL_JSON[+EVAL_JSON...][#UNITS]" ...] [--recipe "COMMAND" ...]
     python models/build_card.py --tables-only OUT.md --table ... --recipe ...
RUN_DIR is an `spn train` folder (log.jsonl, best.pt, ema.pt); EVAL_JSON is the eval.json that
`spn eval --out` wrote for those weights. Each --table adds a four-row table (classic, classic without
Wiener, compression-aware, restored; one column per quality) from another `spn eval --aware --out` run,
under its LABEL (say which split, which scope, which probes: "report split _1, centre 1024, natural");
each --recipe records an exact command that built the database, the probes or an evaluation. No figure
in the card is typed by hand. Writes models/NAME.pt, models/NAME.json, models/NAME.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

from spncli.evaluation import COLUMNS, METHODS
from spncli.restoration import write_model_card
from spncli.training import leave_one_unit_out

HERE = Path(__file__).resolve().parent


def table(rows: list[dict]) -> str:
    cols = COLUMNS
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


METHOD_LABELS = {
    "classic": "classic",
    "classic_nowiener": "classic, no Wiener",
    "aware": "compression-aware",
    "restored": "restored",
}


def four_rows(rows: list[dict]) -> str:
    """One row per residual, one column per quality: median matching PCE / TPR / non-matching above threshold.

    ``rows`` are `spn eval --aware` rows (``ALL_COLUMNS``); a method it did not score shows "-".
    """
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    head = "| residual | " + " | ".join(f"{r['quality']} median / TPR / FP" for r in rows) + " |"
    lines = [head, "|" + "---|" * (len(rows) + 1)]
    for m in METHODS:
        cells = [
            f"{fmt(r.get(f'{m}_median'), '.1f')} / {fmt(r.get(f'{m}_tpr'), '.2f')} / {fmt(r.get(f'{m}_fp'), 'd')}"
            for r in rows
        ]
        lines.append(f"| {METHOD_LABELS[m]} | " + " | ".join(cells) + " |")
    n = rows[0] if rows else {}
    lines.append(f"\n{n.get('matching_pairs', 0)} matching, {n.get('non_matching_pairs', 0)} non-matching pairs "
                 "per quality.")  # fmt: skip
    return "\n".join(lines)


def architecture_text(card: dict) -> str:
    """The card's generator in words."""
    v2 = card.get("architecture") == "v2"
    width = card["architecture_args"]["width"] if v2 else card["architecture"]["width"]
    inputs = (
        "image, compression-aware residual (surviving JPEG DCT coefficients, 1/q-weighted, on the file's own 8x8 "
        "grid), per-block survival map at 1/8 resolution, condition (quality and luminance table) injected by FiLM "
        "in every stage"
        if v2
        else "image, classic residual, condition (quality and luminance table) injected by FiLM in every stage"
    )
    return (
        f"Generator `spncli.networks.{'RestorationNetV2' if v2 else 'RestorationNet'}(width={width})`: "
        f"{card['parameters']:,} parameters; inputs: {inputs}; pixel-unshuffle x2, encoder-decoder with skips, "
        f"local channel/spatial attention; predicts a correction to the {'compression-aware' if v2 else 'classic'} "
        f"residual. Receptive radius {card['receptive_radius']} px (tiles use it as their context margin). "
        "Discriminator: PatchGAN on high-pass noise maps with spectral normalisation and a quality head (training "
        "only)."
    )


def policy_text(card: dict) -> str:
    """What restoration applies at each quality, from the card's policy."""
    post = card["postprocess"]
    if card.get("architecture") == "v2":
        return (
            "CFA zero-mean always; the spectral Wiener filter per image, when at least "
            f"{post['wiener_surviving_at_or_above']:.2%} of the AC luma coefficients survived quantization (the "
            "compression-aware residual's own criterion, chosen on the _0 units); the network's correction only "
            f"at or below quality {post['network_at_or_below_quality']} (chosen on the _0 units; above it the "
            "output is the compression-aware residual itself)"
            + (
                f" and only on images whose region has at least {post['network_min_textured_fraction']:.2%} of its "
                f"8x8 blocks textured (AC standard deviation above {post['textured_block_std_above']:g} grey levels, "
                "from the file's own coefficients; chosen on the _0 units, where the correction lowered the "
                "matching PCE of the flat-field probes (all of them at Q70 and Q50, most at Q90 and Q30), which have "
                "no textured block, and raised most natural ones; below it the output is the compression-aware "
                "residual itself)."
                if post.get("network_min_textured_fraction")
                else "."
            )
        )
    return (
        "CFA zero-mean always; the spectral Wiener filter only above quality "
        f"{post['wiener_dft_above_quality']} (measured on the _1 units: at Q70, Q50 and Q30 it "
        "lowered the median matching PCE of re-compressed probes); the network's correction only at or below "
        f"quality {post['network_at_or_below_quality']} (above it the correction lowered the median "
        "matching PCE compared with the policy alone; see the ablation)."
    )


def training_data(config: dict) -> str:
    """What the training pairs were made of, from the run's own config."""
    if config.get("architecture", "v1") == "v1":
        return (
            "simulated pairs: CBSD68 content (downscaled x0.5) and dead leaves; PRNU from the five Praktica "
            "fingerprints (std 0.003-0.015) and white Gaussian; raw Bayer domain, demosaicing, white balance, "
            "tone curve, camera JPEG Q88-98, re-compression 4:2:0 at a curriculum from Q70-95 down to Q10-95 "
            "with random 8x8 grid offsets. No Dresden file reached training."
        )
    lo, hi = config["quality_start"], config["quality_end"]
    side = config["flatfield_exclude_centre"]
    return (
        f"simulated pairs (spncli.camerasim.simulate_v2): content from {', '.join(config['content'])}, "
        f"area-downscaled x{config['content_downscale']:g} to erase their own noise (files of the _1 units left "
        f"out and logged); real PRNU from {', '.join(config['prnu'])} and fingerprints estimated from the Dresden "
        f"{config['flatfield_units']} flat-fields outside their centre {side}x{side} (which validates), injected "
        "in the raw domain before the camera's JPEG; double compression, the last one on the crop's own grid at a "
        f"curriculum from Q{lo[0]}-{lo[1]} to Q{hi[0]}-{hi[1]}. No file of a _1 unit reached training."
    )


def selection_text(config: dict, weights: str) -> str:
    """How the shipped checkpoint was chosen, and on which split."""
    if weights != "best":
        return "the final EMA weights"
    if config.get("architecture", "v1") == "v1":
        return (
            "the EMA weights with the best validation score (mean ratio of restored to classic median "
            "matching PCE on the Dresden _1 units at Q50 and Q30, 1024x1024)"
        )
    return (
        "the EMA weights with the best validation score on the selection split: mean over the Dresden _0 units "
        "of the ratio of restored to classic median matching PCE (natural probes, centre 1024x1024, Q50 and Q30); "
        "the leave-one-unit-out choice is recorded beside it. The _1 units chose nothing."
    )


def validation_lines(validations: list[dict]) -> list[str]:
    """One line per logged validation: per unit (v2) and quality, the median matching PCE of each residual."""
    out = []
    for v in validations:
        cells = []
        for r in v["rows"]:
            unit = f"{r['unit']} " if "unit" in r else ""
            aware = f" / aware {r['aware_median']:.1f}" if "aware_median" in r else ""
            restored = r["restored_median"]
            cells.append(f"{unit}Q{r['quality']} classic {r['classic_median']:.1f}{aware} -> {restored:.1f}")
        score = f" (score {v['score']:.3f})" if v.get("score") is not None else ""
        out.append(f"- step {v['step']}{score}: " + "; ".join(cells))
    return out


def labelled_tables(specs: list[str], threshold: float = 60.0) -> list[tuple[str, dict]]:
    """``LABEL=EVAL_JSON[+EVAL_JSON...][#UNITS]`` -> (label, {"rows", "settings", "db_sha256", "sources"}).

    Without ``#UNITS`` the rows are those `spn eval` wrote. With it, the pairs of the listed eval.json
    files (e.g. one run at Q90/70 and one at Q50/30) are summarised again by
    :func:`spncli.evaluation.summarize` with matching pairs counted for cameras ending in UNITS
    (``#_0``: the selection split, ``#_1``: the report split), exactly as ``spn eval --units`` would.
    """
    from spncli.evaluation import PairScore, summarize

    out = []
    for spec in specs:
        label, sep, rest = spec.rpartition("=")
        if not sep or not label:
            raise SystemExit(f"--table {spec!r}: expected LABEL=EVAL_JSON[+EVAL_JSON...][#UNITS]")
        paths, _, units = rest.partition("#")
        evals = [json.loads(Path(p).read_text()) for p in paths.split("+")]
        if units or len(evals) > 1:
            pairs = [PairScore(**p) for ev in evals for p in ev["pairs"]]
            rows = summarize(pairs, threshold, lambda c, u=units: c.endswith(u))
        else:
            rows = evals[0]["rows"]
        settings = [ev.get("settings") for ev in evals]
        out.append((label, {"rows": rows, "settings": settings, "units": units or [s.get("units") for s in settings],
                            "db_sha256": sorted({ev.get("db_sha256") or "" for ev in evals}),
                            "weights_sha256": sorted({ev.get("weights_sha256") or "" for ev in evals}),
                            "model": sorted({ev.get("model") or "" for ev in evals}),
                            "sources": paths.split("+")}))  # fmt: skip
    return out


def tables_markdown(tables: list[tuple[str, dict]], recipes: list[str]) -> list[str]:
    md = []
    for label, ev in tables:
        md += [f"## {label}", "", four_rows(ev["rows"]), ""]
        if ev.get("weights_sha256"):
            md += [f"Model {', '.join(ev.get('model', []))}, weights SHA-256 {', '.join(ev['weights_sha256'])}; "
                   f"database SHA-256 {', '.join(ev.get('db_sha256', []))}.", ""]  # fmt: skip
    if recipes:
        md += ["## Exact commands behind these tables", ""] + [f"    {c}" for c in recipes] + [""]
    return md


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("eval", type=Path, nargs="?")
    ap.add_argument("--tables-only", type=Path, default=None,
                    help="write only the --table tables and --recipe commands to this Markdown file (no weights)")
    ap.add_argument("--weights", default="best", choices=["best", "ema"])
    ap.add_argument("--name", default="spn-restore-v1")
    ap.add_argument(
        "--command",
        default="spn train --config models/train-v1.toml --out runs/v1 --validation ../shared/data/dresden-nikon",
    )
    ap.add_argument("--network-max-quality", type=int, default=100, help="apply the network at or below this")
    ap.add_argument("--network-min-textured", type=float, default=0.0,
                    help="apply the network only where at least this fraction of 8x8 blocks is textured")
    ap.add_argument("--ablation", type=Path, default=None, help="eval.json of the zero-correction (policy-only) path")
    ap.add_argument("--ablation-run", type=Path, default=None,
                    help="spn train folder of the same config without the adversarial term: its validations")
    ap.add_argument("--full-network", type=Path, default=None, help="eval.json with the network at every quality")
    ap.add_argument("--table", action="append", default=[], help="LABEL=EVAL_JSON: a four-row table (repeatable)")
    ap.add_argument("--recipe", action="append", default=[], help="an exact command behind the tables (repeatable)")
    ap.add_argument("--hardware", default=f"{platform.processor() or platform.machine()}, 2 CPU cores, no GPU")
    args = ap.parse_args()
    if args.tables_only:
        md = ["# Residuals compared (generated by models/build_card.py --tables-only from spn eval outputs)", ""]
        md += tables_markdown(labelled_tables(args.table), args.recipe)
        md += ["Generated by:", "", "    " + shlex.join(["python", "models/build_card.py", *sys.argv[1:]]), ""]
        args.tables_only.write_text("\n".join(md))
        print(f"wrote {args.tables_only}")
        return
    if args.run is None or args.eval is None:
        ap.error("RUN_DIR and EVAL_JSON are required (or --tables-only)")
    log = [json.loads(x) for x in (args.run / "log.jsonl").read_text().splitlines()]
    config = next(x["config"] for x in log if "config" in x)
    steps = [x for x in log if "seconds" in x]
    validations = [
        {
            "step": x["step"],
            **{k: v for k, v in x["validation"].items() if k != "rows"},
            "rows": x["validation"]["rows"],
        }
        for x in log
        if "validation" in x
    ]
    chosen = json.loads((args.run / "best.json").read_text())["step"] if args.weights == "best" else steps[-1]["step"]
    evaluation = json.loads(args.eval.read_text())
    fields = {
        "training": {
            "config": config,
            "steps_run": steps[-1]["step"],
            "weights": f"{args.weights} EMA generator (step {chosen})",
            "wall_seconds": steps[-1]["seconds"],
            "hardware": args.hardware,
            "torch": torch.__version__,
            "data": training_data(config),
            "validation": validations,
            "selection": selection_text(config, args.weights),
            "leave_one_unit_out": leave_one_unit_out([x for x in log if "validation" in x]),
        },
        "command": args.command,
        "evaluation": {
            "rows": evaluation["rows"],
            "settings": evaluation["settings"],
            "db_sha256": evaluation.get("db_sha256"),
            "probes": "the 16 Dresden natural images re-compressed by `spn degrade` (4:2:0); matching pairs counted "
            f"for the {evaluation['settings'].get('units') or 'all'} units only, non-matching pairs for all",
        },
    }
    tables = labelled_tables(args.table)
    fields["evaluation"]["tables"] = [{"label": label, **ev} for label, ev in tables]
    fields["evaluation"]["commands"] = args.recipe
    if args.ablation:
        fields["evaluation"]["ablation_policy_only"] = json.loads(args.ablation.read_text())["rows"]
    card_path = write_model_card(
        args.run / f"{args.weights}.pt", HERE, args.name, fields, network_at_or_below_quality=args.network_max_quality,
        network_min_textured_fraction=args.network_min_textured,
    )
    card = json.loads(card_path.read_text())
    md = [
        f"# Model card: {args.name}",
        "",
        "Quality-conditioned restoration of sensor pattern noise from JPEG-compressed images (`spn restore`).",
        "",
        "## Architecture",
        architecture_text(card),
        "",
        f"Weights: `{card['weights']}`, SHA-256 `{card['weights_sha256']}`; checkpoint keys are the state-dict keys "
        f"of `{'RestorationNetV2' if card.get('architecture') == 'v2' else 'RestorationNet'}` (listed in the JSON "
        "card); loaded with `torch.load(weights_only=True)`.",
        "",
        "## Training",
        fields["training"]["data"],
        "",
        f"Steps: {fields['training']['steps_run']} (batch {config['batch']}, patch {config['patch']}); "
        f"weights: {fields['training']['weights']}; {fields['training']['wall_seconds'] / 60:.0f} min on "
        f"{fields['training']['hardware']}; torch {torch.__version__}.",
        "",
        f"Exact command: `{args.command}` (seed {config['seed']}).",
        "",
        "Validation during training (median matching PCE, classic -> restored):",
        "",
    ]
    md += validation_lines(validations)
    louo = fields["training"]["leave_one_unit_out"]
    if louo:
        md += ["", "Leave-one-unit-out (each unit's score at the step the other units would have chosen): "
               + "; ".join(f"{u} step {v['chosen_step']}: {v['held_out_score']:.3f}" for u, v in louo.items()
                           if isinstance(v, dict))
               + f"; mean {louo['mean_held_out']:.3f}."]  # fmt: skip
    v2 = card.get("architecture") == "v2"
    if args.ablation_run:
        ablation_log = [json.loads(x) for x in (args.ablation_run / "log.jsonl").read_text().splitlines()]
        ablation_config = next(x["config"] for x in ablation_log if "config" in x)
        md += [
            "",
            f"## Ablation: adversarial_weight = {ablation_config['adversarial_weight']:g} (these weights: "
            f"{config['adversarial_weight']:g}), otherwise the same config, seed and budget "
            f"(`{args.ablation_run.name}`)",
            "",
        ]
        md += validation_lines([{"step": x["step"], **x["validation"]} for x in ablation_log if "validation" in x])
    md += [
        "",
        "## Evaluation (`spn eval`, Dresden Nikon, centre 1024x1024)",
        fields["evaluation"]["probes"],
        "",
        table(evaluation["rows"]),
        "",
        "These pairs are of the report units (_1), which chose nothing; the weights are also judged on cameras "
        "outside ../shared."
        if v2 and evaluation["settings"].get("units") == "_1"
        else "These pairs are of the selection units, which chose the weights and the policy: a selection score."
        if v2
        else "The validation units were used to choose the weights (and the post-processing policy), so these "
        "figures on them are optimistic; the weights are also judged on cameras outside ../shared.",
        "",
        "## Quality policy (what restoration applies at each quality)",
        policy_text(card),
        "",
    ]
    md += tables_markdown(tables, args.recipe)
    if "ablation_policy_only" in fields["evaluation"]:
        md += [
            "## Ablation: the quality policy alone (no network correction at any quality)",
            "",
            table(fields["evaluation"]["ablation_policy_only"]),
            "",
        ]
    if args.full_network:
        md += [
            "## Ablation: the network at every quality (with the same post-processing)",
            "",
            table(json.loads(args.full_network.read_text())["rows"]),
            "",
        ]
    (HERE / f"{args.name}.md").write_text("\n".join(md))
    print(f"wrote {card_path}, {HERE / (args.name + '.md')}")


if __name__ == "__main__":
    main()
