"""`manifoldadv audit`: cheap checks that a robustness number can be believed (gradient masking,
weak attacks), a verdict per check and model. Exit 1 when any check fails."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..runtime import accel, console, versions
from ..evaluation.audit import audit as run_audit, failed
from ._app import app
from ..data.external import describe as describe_data
from ._options import DATA_OPTIONS, MODEL_OPTIONS, BasisFile, Checkpoints, DataFor, EigenK, Normalize, Run, Weights, shared
from .common import classifiers, dataset as load_data, eigenbasis, load_classifiers, load_cvae

VERDICT_STYLE = {"pass": "[green]pass[/]", "FAIL": "[bold red]FAIL[/]", "info": "info", "n/a": "n/a"}


def render(models: list[dict]) -> Table:
    table = Table(title="audit (rows: checks, columns: models)")
    table.add_column("check")
    for m in models:
        table.add_column(m["label"])
    for i, c in enumerate(models[0]["checks"]):
        table.add_row(f"({c['key']}) {c['check']}", *[VERDICT_STYLE[m["checks"][i]["verdict"]] for m in models])
    return table


@app.command()
@shared(DATA_OPTIONS, MODEL_OPTIONS)
def audit(
    run: Run,
    checkpoints: Checkpoints,
    data: DataFor = None,
    weights: Weights = None,
    normalize: Normalize = None,
    examples: Annotated[int, typer.Option("--examples", min=1, help="Test examples the checks use (the first N).")] = 500,
    eps: Annotated[Optional[float], typer.Option("--eps", min=0.0, help="linf budget (default: the data set's test eps).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="PGD steps (default: the data set's).")] = None,
    cvae: Annotated[Optional[Path], typer.Option("--cvae", dir_okay=False, help="CVAE for the latent-attack check (j).")] = None,
    k: EigenK = None,
    basis: BasisFile = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 500,
) -> None:
    """Check each model's robustness evaluation for signs of gradient masking and weak attacks:
    (a) accuracy falls with eps per example, (b) an unbounded budget reaches chance, (c) more steps
    or restarts change little, (d) PGD <= FGSM, (e) black-box Square finds nothing PGD missed,
    (f) logits not probabilities, (g) few exactly zero input gradients, (h) deterministic,
    batch-size independent predictions, (i) returned examples in the ball and the box and fooling
    on a fresh pass, (j) a latent attack's pixel distortion (with --cvae), (k) the eigenspace attacks'
    examples in their budget and the box, and their share in their subspace (with --k or --basis, or
    for an eigen-trained model). Exit 1 if any check fails."""
    dev = run.start()
    refs, data_name, metas = classifiers(run, checkpoints, data, weights, normalize)
    cvae_model = load_cvae(cvae, dev, data_name)[0] if cvae is not None else None
    ds = load_data(data_name, run.data_root, run.limit, run.download)
    from ..training import MODES

    trained = [MODES.get(m.get("mode")) for m in metas if m is not None]
    wanted = k is not None or basis is not None or any(t is not None and t.needs_basis for t in trained)
    basis_model = eigenbasis(ds, k, basis, dev) if wanted else None
    compiled = accel.resolve_compile(run.compile, dev, "eval")
    models = []
    for model, rec in load_classifiers(refs, ds, dev):
        model = accel.prepare(model, precision=run.precision, compile=compiled, device=dev)
        with console.doing(f"while auditing {rec['ref']}", "audit writes nothing"):
            checks = run_audit(model, ds.test, data_name, device=dev, n=examples, eps=eps, steps=steps,
                               batch_size=batch_size, seed=run.seed, cvae=cvae_model, num_classes=ds.num_classes,
                               basis=basis_model)
        models.append({"checkpoint": rec["ref"], "label": rec["label"], "origin": rec["origin"],
                       "checks": [c.as_dict() for c in checks], "failed": failed(checks)})
        console.log(f"{rec['label']}: {sum(c.verdict == 'FAIL' for c in checks)} check(s) failed")
    any_failed = any(m["failed"] for m in models)
    if run.json_out:
        console.emit_json({"dataset": data_name, "data": describe_data(ds), "examples": min(examples, len(ds.test)), "seed": run.seed,
                           "versions": versions(),
                           "models": models, "failed": any_failed})
    else:
        console.out.print(render(models))
        for m in models:
            for c in m["checks"]:
                console.out.print(f"{m['label']} ({c['key']}) {c['verdict']}: {c['detail']}", markup=False)
    if any_failed:
        raise typer.Exit(1)
