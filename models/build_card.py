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
    ap.add_argument("--ablation", type=Path, default=None, help="eval.json of the zero-correction (policy-only) path")
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
            "data": "simulated pairs: CBSD68 content (downscaled x0.5) and dead leaves; PRNU from the five Praktica "
            "fingerprints (std 0.003-0.015) and white Gaussian; raw Bayer domain, demosaicing, white balance, "
            "tone curve, camera JPEG Q88-98, re-compression 4:2:0 at a curriculum from Q70-95 down to Q10-95 "
            "with random 8x8 grid offsets. No Dresden file reached training.",
            "validation": validations,
            "selection": "the EMA weights with the best validation score (mean ratio of restored to classic median "
            "matching PCE on the Dresden _1 units at Q50 and Q30, 1024x1024)"
            if args.weights == "best"
            else "the final EMA weights",
        },
        "command": args.command,
        "evaluation": {
            "rows": evaluation["rows"],
            "settings": evaluation["settings"],
            "db_sha256": evaluation.get("db_sha256"),
            "probes": "the 16 Dresden natural images re-compressed by `spn degrade` at 90/70/50/30 (4:2:0); "
            "matching pairs counted for the _1 units only, non-matching pairs for all",
        },
    }
    tables = labelled_tables(args.table)
    fields["evaluation"]["tables"] = [{"label": label, **ev} for label, ev in tables]
    fields["evaluation"]["commands"] = args.recipe
    if args.ablation:
        fields["evaluation"]["ablation_policy_only"] = json.loads(args.ablation.read_text())["rows"]
    card_path = write_model_card(
        args.run / f"{args.weights}.pt", HERE, args.name, fields, network_at_or_below_quality=args.network_max_quality
    )
    card = json.loads(card_path.read_text())
    md = [
        f"# Model card: {args.name}",
        "",
        "Quality-conditioned restoration of sensor pattern noise from JPEG-compressed images (`spn restore`).",
        "",
        "## Architecture",
        f"Generator `spncli.networks.RestorationNet(width={card['architecture']['width']})`: "
        f"{card['parameters']:,} parameters; inputs: image, classic residual, condition (quality and luminance "
        "table) injected by FiLM in every stage; pixel-unshuffle x2, encoder-decoder with skips, local "
        "channel/spatial attention; predicts a correction to the classic residual. Receptive radius "
        f"{card['receptive_radius']} px (tiles use it as their context margin). Discriminator: PatchGAN on "
        "high-pass noise maps with spectral normalisation and a quality head (training only).",
        "",
        f"Weights: `{card['weights']}`, SHA-256 `{card['weights_sha256']}`; checkpoint keys are the state-dict keys "
        "of `RestorationNet` (listed in the JSON card); loaded with `torch.load(weights_only=True)`.",
        "",
        "## Training",
        fields["training"]["data"],
        "",
        f"Steps: {fields['training']['steps_run']} (batch {config['batch']}, patch {config['patch']}); "
        f"weights: {fields['training']['weights']}; {fields['training']['wall_seconds'] / 60:.0f} min on "
        f"{fields['training']['hardware']}; torch {torch.__version__}.",
        "",
        f"Exact command: `{args.command}` (config `models/train-v1.toml`, seed {config['seed']}).",
        "",
        "Validation during training (median matching PCE, classic -> restored):",
        "",
    ]
    for v in validations:
        md.append(
            f"- step {v['step']}: "
            + "; ".join(f"{r['quality']} {r['classic_median']:.1f} -> {r['restored_median']:.1f}" for r in v["rows"])
        )
    md += [
        "",
        "## Evaluation (`spn eval`, Dresden Nikon, centre 1024x1024)",
        fields["evaluation"]["probes"],
        "",
        table(evaluation["rows"]),
        "",
        "The validation units were used to choose the weights (and the post-processing policy), so these "
        "figures on them are optimistic; the weights are also judged on cameras outside ../shared.",
        "",
        "## Quality policy (what restoration applies at each quality)",
        "CFA zero-mean always; the spectral Wiener filter only above quality "
        f"{card['postprocess']['wiener_dft_above_quality']} (measured on the _1 units: at Q70, Q50 and Q30 it "
        "lowered the median matching PCE of re-compressed probes); the network's correction only at or below "
        f"quality {card['postprocess']['network_at_or_below_quality']} (above it the correction lowered the median "
        "matching PCE compared with the policy alone; see the ablation).",
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
