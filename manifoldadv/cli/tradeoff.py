"""`manifoldadv tradeoff`: the paper's Table 2 (and its eigenspace half) and the measured trade-off."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from ..runtime import console
from ..study import tables
from ._app import app
from ._options import DATA_OPTIONS, MODEL_OPTIONS, Data, FullChecks, Generator, Run, Strategy, StrategyName, SyncBN, shared
from . import common


@app.command()
@shared(DATA_OPTIONS, MODEL_OPTIONS)
def tradeoff(
    run: Run,
    data: Data = "synthetic",
    run_dir: Annotated[Path, typer.Option("--run-dir", file_okay=False, help="Where the checkpoints are (missing ones are trained there).")] = Path("runs"),
    strategy: Strategy = StrategyName.avg,
    quick: Annotated[bool, typer.Option("--quick", help="Short schedules and subsets (smoke run).")] = False,
    train_steps: Annotated[Optional[int], typer.Option("--train-steps", min=1, help="PGD steps of the adversarial training attacks (default: the paper's, 40 on MNIST); fewer cuts the study's CPU time about proportionally.")] = None,
    autoattack: Annotated[Optional[bool], typer.Option("--autoattack/--no-autoattack", help="AutoAttack rows beside the regular-attack rows (default: when pyautoattack is installed; on a subset of the test set: see --full-checks).")] = None,
    full_checks: FullChecks = None,
    generator: Generator = None,
    sync_bn: SyncBN = False,
) -> None:
    """l1-adv / l-inf-adv / joint-lp, PGD-adv / VAE-adv / joint and PGD-adv / eigen-adv / joint-eigen under
    their attacks, and the trade-off."""
    data = common.study_data(run, data)
    study, ds = common.study(run, data, run_dir, strategy=strategy, quick=quick, train_steps=train_steps,
                             autoattack=autoattack, audit=False, full_checks=full_checks, generator=generator, sync_bn=sync_bn)
    with console.doing("", f"finished models and evaluations are kept in {study.run_dir}; "
                           "rerun the same command to continue"):
        trade = study.tradeoff(ds)
    if run.json_out:
        console.emit_json({"data": data, "run_dir": str(run_dir), "n_test": len(ds.test), **trade,
                           "paper": {"drops": tables.paper_drops(data)}})
        return
    for t in tables.table2(trade, data):
        console.out.print(tables.rich(t))
    console.out.print(tables.rich(tables.drops_table(trade, data)))
