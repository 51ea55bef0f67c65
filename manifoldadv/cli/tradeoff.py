"""`manifoldadv tradeoff`: both halves of the paper's Table 2 and the measured trade-off."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..runtime import console
from ..study import report
from ._app import app
from ._options import DATA_OPTIONS, MODEL_OPTIONS, SyncBN, Data, DataName, Run, shared
from . import common
from .train import Strategy


def render(trade: dict, data: str) -> list[Table]:
    ref = report.paper_drops(data) or {}
    tables = []
    for half, title in report.TABLE2_HALVES:
        t = Table(title=f"Table 2 ({title}): test accuracy")
        mat = trade[half]
        cols = list(next(iter(mat.values())).keys())
        t.add_column("attack")
        for c in cols:
            t.add_column(report.table2_model(c, half), justify="right")
        for a, row in mat.items():
            t.add_row(report.table2_attack(a, half) + (" (worst of SLIDE, pointwise)" if half == "lp" and a == "l1" else ""),
                      *[report.pct(row[c]) for c in cols])
        if half == "lp" and "l1_slide_only" in trade:
            t.add_row("l1-attack (SLIDE only)", *[report.pct(trade["l1_slide_only"][c]) for c in cols])
        tables.append(t)
    t = Table(title=f"trade-off: robust accuracy the joint model loses (strategy {trade['strategy']})")
    for col in ("joint model", "attack 1", "attack 2", "mean", "paper mean"):
        t.add_column(col, justify="right" if col != "joint model" else "left")
    for model, label in (("joint-lp", "l1+l-inf vs l1-adv, l-inf-adv"), ("joint", "PGD+VAE vs PGD-adv, VAE-adv")):
        d = trade["drops"][model]
        keys = [k for k in d if k != "mean"]
        paper_mean = ref.get(model, {}).get("mean")
        t.add_row(label, *[f"{k}: {100 * d[k]:+.1f} pp" for k in keys], f"{100 * d['mean']:+.1f} pp",
                  "n/a" if paper_mean is None else f"{100 * paper_mean:+.1f} pp")
    tables.append(t)
    return tables


@app.command()
@shared(DATA_OPTIONS, MODEL_OPTIONS)
def tradeoff(
    run: Run,
    data: Data = DataName.synthetic,
    run_dir: Annotated[Path, typer.Option("--run-dir", file_okay=False, help="Where the checkpoints are (missing ones are trained there).")] = Path("runs"),
    strategy: Annotated[Strategy, typer.Option("--strategy", help="Joint-training strategy of the joint models.")] = Strategy.avg,
    quick: Annotated[bool, typer.Option("--quick", help="Short schedules and subsets (smoke run).")] = False,
    train_steps: Annotated[Optional[int], typer.Option("--train-steps", min=1, help="PGD steps of the adversarial training attacks (default: the paper's, 40 on MNIST); fewer cuts the study's CPU time about proportionally.")] = None,
    autoattack: Annotated[Optional[bool], typer.Option("--autoattack/--no-autoattack", help="AutoAttack rows beside the regular-attack rows (default: when pyautoattack is installed; quick runs use the first 100 test examples).")] = None,
    sync_bn: SyncBN = False,
) -> None:
    """l1-adv / l-inf-adv / joint-lp and PGD-adv / VAE-adv / joint under their attacks, and the trade-off."""
    study, ds = common.study(run, data.value, run_dir, strategy=strategy, quick=quick, train_steps=train_steps,
                             autoattack=autoattack, audit=False, sync_bn=sync_bn)
    with console.doing("", f"finished models and evaluations are kept in {study.run_dir}; "
                           "rerun the same command to continue"):
        trade = study.tradeoff(ds)
    if run.json_out:
        console.emit_json({"data": data.value, "run_dir": str(run_dir), "n_test": len(ds.test), **trade,
                           "paper": {"drops": report.paper_drops(data.value)}})
        return
    for t in render(trade, data.value):
        console.out.print(t)
