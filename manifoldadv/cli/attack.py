"""`manifoldadv attack`: the attack matrix (attacks as rows, checkpoints as columns), like the
paper's Table 1."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..data import split_digest
from ..runtime import accel, console, versions
from ..attacks import ATTACKS, WORST, describe, needs, spec_for, worst_name
from .. import config
from ..config import defaults
from ..errors import UsageError
from ..evaluation import attack_accuracy
from ._app import app
from ..data.external import describe as describe_data
from ._options import (DATA_OPTIONS, MODEL_OPTIONS, BasisFile, Checkpoints, DataFor, EigenEps, EigenK, Normalize, Run,
                       Weights, shared)
from .common import classifiers, dataset as load_data, eigenbasis, load_classifiers, load_cvae


def parse_attacks(text: str) -> list[str]:
    """Comma-separated attack names; a worst:A,B,... takes every name after it as its parts (so it
    comes last; worst:A+B+... can stand anywhere)."""
    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names:
        raise UsageError(f"no attack in {text!r}; choose from {', '.join(ATTACKS)}")
    at = next((i for i, n in enumerate(names) if n.startswith(WORST) and "+" not in n), None)
    if at is not None:
        names[at:] = [worst_name([names[at][len(WORST):], *names[at + 1:]])]
    names = [worst_name(n[len(WORST):].split("+")) if n.startswith(WORST) else n for n in names]
    for name in names:
        needs(name)  # an unknown name is refused here
    return list(dict.fromkeys(names))


def run_matrix(loaded, attack_names, ds, dev, *, cvae_model=None, cvae_path=None, basis=None, budgets=None,
               steps=None, step_size=None, restarts=None, batch_size=None, seed=0, precision="fp32", compile=None):
    """Evaluate every model (model, record) under every attack; returns the JSON rows."""
    bs = batch_size or defaults(ds.name).eval_batch_size
    compiled = accel.resolve_compile(compile, dev, "eval")
    # every spec first: a missing budget is refused before any work
    specs = {name: spec_for(name, ds.name, restarts=restarts, steps=steps, step_size=step_size, budgets=budgets)
             for name in attack_names}
    rows = []
    for model, rec in loaded:
        model = accel.prepare(model, precision=precision, compile=compiled, device=dev)
        where = rec["origin"].get("path") or rec["origin"].get("factory")
        for name, spec in specs.items():
            with console.doing(f"while attacking {where} with {name}", "attack writes nothing"):
                res = attack_accuracy(model, ds.test, spec, device=dev, batch_size=bs, cvae=cvae_model, basis=basis,
                                      seed=seed, label=f"{rec['label']} / {name}")
            # the same row as `reproduce` keeps for each evaluation
            row = {"checkpoint": rec["ref"], "sha256": rec["origin"]["sha256"], "mode": rec["mode"],
                   "label": rec["label"], "origin": rec["origin"], "attack": name,
                   **spec.as_dict(), **res,
                   **accel.record(precision, compiled)}
            if "cvae" in needs(name):
                row["cvae"] = str(cvae_path)
            if "basis" in needs(name):
                row["eigenbasis"] = basis.describe()
            rows.append(row)
            console.log(f"{rec['label']}: {name} accuracy {res['accuracy']:.2%}")
    return rows


def render(rows) -> Table:
    table = Table(title="test accuracy (rows: attacks, columns: models)")
    table.add_column("attack")
    refs = list(dict.fromkeys(r["checkpoint"] for r in rows))
    for ref in refs:
        table.add_column(next(r["label"] for r in rows if r["checkpoint"] == ref), justify="right")
    for name in dict.fromkeys(r["attack"] for r in rows):
        cells = []
        for ref in refs:
            r = next(r for r in rows if r["checkpoint"] == ref and r["attack"] == name)
            cell = f"{r['accuracy']:.2%}"
            if "recon_accuracy" in r:
                cell += f" (recon {r['recon_accuracy']:.1%})"
            if "subspace_share" in r:
                cell += f" (in subspace {r['subspace_share']:.1%})"
            cells.append(cell)
        spec = next(r for r in rows if r["attack"] == name)
        table.add_row(describe(spec), *cells)
    return table


@app.command()
@shared(DATA_OPTIONS, MODEL_OPTIONS)
def attack(
    run: Run,
    checkpoints: Checkpoints,
    data: DataFor = None,
    weights: Weights = None,
    normalize: Normalize = None,
    attacks: Annotated[str, typer.Option("--attacks", help=f"Comma-separated, from: {', '.join(ATTACKS)}; worst:A,B,... (last) is the per-example worst case of A, B, ...")] = "clean,fgsm,pgd,l2,l1",
    eps: Annotated[Optional[float], typer.Option("--eps", min=0.0, help="linf budget of fgsm/pgd (default: the data set's test eps).")] = None,
    l1_eps: Annotated[Optional[float], typer.Option("--l1-eps", min=0.0)] = None,
    l2_eps: Annotated[Optional[float], typer.Option("--l2-eps", min=0.0)] = None,
    latent_eps: Annotated[Optional[float], typer.Option("--latent-eps", min=0.0)] = None,
    eigen_eps: EigenEps = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Steps of the iterative attacks.")] = None,
    step_size: Annotated[Optional[float], typer.Option("--step-size", min=0.0, help="Step of the iterative attacks (default 2.5 eps / steps).")] = None,
    restarts: Annotated[Optional[int], typer.Option("--restarts", min=1, help="Random restarts of the iterative attacks and pointwise; the worst case per example is kept (default 1; pointwise: 5). One-step attacks (fgsm, vae) take none.")] = None,
    cvae: Annotated[Optional[Path], typer.Option("--cvae", dir_okay=False, help="CVAE checkpoint for the vae attacks.")] = None,
    k: EigenK = None,
    basis: BasisFile = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1)] = None,
    worst: Annotated[bool, typer.Option("--worst", help="Add the per-example worst case of the listed attacks (an example counts as robust only if every attack failed); worst:A,B,... in --attacks names one directly.")] = False,
) -> None:
    """Accuracy of each model under each attack on the test set of its data set.

    Models: checkpoints this toolkit trained, your own (a factory package.module:function with
    --weights, or a .pt2 torch.export program; images in [0, 1], --normalize when the model expects
    normalised inputs) on the data they name or --data.

    Example: manifoldadv attack mymodel:net --weights net.safetensors --data npz:mydata.npz --eps 0.1
    --l2-eps 1 --attacks clean,pgd,l2,autoattack
    """
    dev = run.start()
    names = parse_attacks(attacks)
    if worst:
        parts = [n for n in names if n != "clean" and not n.startswith(WORST)]
        if len(parts) < 2:
            raise UsageError("--worst needs at least two attacks besides clean in --attacks")
        names.append(worst_name(parts))
    refs, data_name, metas = classifiers(run, checkpoints, data, weights, normalize)
    needed = set().union(*(needs(n) for n in names))
    cvae_model = basis_model = None
    if "cvae" in needed:
        if cvae is None:
            raise UsageError("the vae attacks need --cvae CVAE.safetensors (train one with --mode cvae)")
        cvae_model, _ = load_cvae(cvae, dev, data_name)
    ds = load_data(data_name, run.data_root, run.limit, run.download)
    if "basis" in needed:
        basis_model = eigenbasis(ds, k, basis, dev)
    if latent_eps is None and cvae_model is not None:  # sized to the generator's latent (config.latent_eps)
        latent_eps = config.latent_eps(data_name, cvae_model.latent)
    budgets = {"linf": eps, "l2": l2_eps, "l1": l1_eps, "latent": latent_eps, "eigen": eigen_eps}
    loaded = load_classifiers(refs, ds, dev)
    rows = run_matrix(loaded, names, ds, dev, cvae_model=cvae_model, cvae_path=cvae, basis=basis_model,
                      budgets=budgets, steps=steps, step_size=step_size, restarts=restarts, batch_size=batch_size,
                      seed=run.seed, precision=run.precision, compile=run.compile)
    if run.json_out:
        console.emit_json({"dataset": data_name, "data": describe_data(ds), "n": len(ds.test),
                           "test_digest": split_digest(ds.test), "seed": run.seed, "versions": versions(),
                           "results": rows})
        return
    console.out.print(render(rows))
