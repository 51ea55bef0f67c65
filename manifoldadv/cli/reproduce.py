"""`manifoldadv reproduce`: the paper's whole study in one resumable command, with a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..runtime import console
from ..study import reproduce as study_run
from ..study.seeds import parse as seed_list
from ._app import app
from ._options import DATA_OPTIONS, MODEL_OPTIONS, Data, FullChecks, Generator, Run, Strategy, StrategyName, SyncBN, shared
from . import common


@app.command()
@shared(DATA_OPTIONS, MODEL_OPTIONS)
def reproduce(
    run: Run,
    data: Data = "synthetic",
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", file_okay=False, help="Output folder (default runs/<data>).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Short schedules and subsets: a smoke run; the report says so.")] = False,
    strategy: Strategy = StrategyName.avg,
    theory: Annotated[bool, typer.Option("--theory/--no-theory", help="Run `theory verify` into the report.")] = True,
    train_steps: Annotated[Optional[int], typer.Option("--train-steps", min=1, help="PGD steps of the adversarial training attacks (default: the paper's, 40 on MNIST); fewer cuts the study's CPU time about proportionally.")] = None,
    autoattack: Annotated[Optional[bool], typer.Option("--autoattack/--no-autoattack", help="AutoAttack rows beside the regular-attack rows of Tables 1 and 2 (default: when pyautoattack is installed; on a subset of the test set: see --full-checks).")] = None,
    audit: Annotated[bool, typer.Option("--audit/--no-audit", help="Audit every trained model (see `manifoldadv audit`) into the report.")] = True,
    full_checks: FullChecks = None,
    generator: Generator = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Evaluation seeds, e.g. 0,1,2: every cell of a random attack is measured with each and reported as mean ± standard deviation (default: --seed only).")] = None,
    train_seeds: Annotated[Optional[str], typer.Option("--train-seeds", help="More training seeds, e.g. 1,2: the models of --seeded-modes are trained again with each (generator included, in RUN_DIR/seeds/seed-N) and their cells pool every training seed.")] = None,
    seeded_modes: Annotated[str, typer.Option("--seeded-modes", help="The models --train-seeds trains again.")] = "std,vae",
    sync_bn: SyncBN = False,
) -> None:
    """Train every model of the study, run the attack matrix, spectra, trade-offs and theory checks,
    and write report.md, results.json and figures into the run directory (re-runs resume).

    Examples:

      manifoldadv reproduce --data mnist --generator cvae-gauss --train-steps 5 --seeds 0,1,2 --train-seeds 1,2
    """
    data = common.study_data(run, data)
    run_dir = run_dir or Path("runs") / data
    study, ds = common.study(run, data, run_dir, strategy=strategy, quick=quick, train_steps=train_steps,
                             autoattack=autoattack, audit=audit, full_checks=full_checks, generator=generator,
                             eval_seeds=seed_list(seeds), train_seeds=seed_list(train_seeds),
                             seeded_modes=tuple(m for m in seeded_modes.split(",") if m), sync_bn=sync_bn)
    with console.doing("", f"finished models and evaluations are kept in {study.run_dir}; "
                           "rerun the same command to continue"):
        results = study_run.run(study, ds, theory=theory)
    if run.json_out:
        console.emit_json({"run_dir": str(run_dir), "report": str(run_dir / "report.md"), **results})
        return
    console.out.print(f"report: {run_dir / 'report.md'}")
