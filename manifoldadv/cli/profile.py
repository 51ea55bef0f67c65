"""`manifoldadv profile`: each model's accuracy against l2 budgets on and off the class eigenspace
at the same norms, with PGD-l2 beside them (evaluation/profile.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..config import defaults
from ..evaluation import profile as P
from ..data import split_digest
from ..runtime import accel, console, outputs, versions
from ._app import app
from ..data.external import describe as describe_data
from ._options import DATA_OPTIONS, MODEL_OPTIONS, BasisFile, Checkpoints, DataFor, EigenK, Normalize, Run, Weights, shared
from .common import classifiers, dataset as load_data, eigenbasis, load_classifiers


def render(name: str, result: dict) -> Table:
    t = Table(title=f"{name}: accuracy against l2 budgets (clean {result['clean']:.2%})")
    for col in ("eps", "on (eigen)", "off (eigen-off-l2)", "PGD-l2", "fools more (2 se)"):
        t.add_column(col, justify="right")
    for i, eps in enumerate(result["eps"]):
        t.add_row(f"{eps:g}", *(f"{result['curves'][n][i]:.2%}" for n in P.CURVES), result["more_fooled_by"][i])
    return t


@app.command()
@shared(DATA_OPTIONS, MODEL_OPTIONS)
def profile(
    run: Run,
    checkpoints: Checkpoints,
    data: DataFor = None,
    weights: Weights = None,
    normalize: Normalize = None,
    eps_grid: Annotated[Optional[str], typer.Option("--eps-grid", help="Comma-separated l2 budgets (default: 0.25, 0.5, 1, 1.5, 2 and 3 times the data set's eigen eps).")] = None,
    k: EigenK = None,
    basis: BasisFile = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Steps of every attack (default: each one's own: 10 for the eigenspace attacks, the data set's PGD steps for PGD-l2).")] = None,
    restarts: Annotated[Optional[int], typer.Option("--restarts", min=1, help="Random restarts of every attack (default 1).")] = None,
    examples: Annotated[Optional[int], typer.Option("--examples", min=1, help="The first N test examples (default: all). Unlike --limit it leaves the training split, which the eigenbasis comes from, whole.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1)] = None,
    plot_dir: Annotated[Optional[Path], typer.Option("--plot-dir", file_okay=False, help="Write one figure per model here: <checkpoint name>-profile.png.")] = None,
) -> None:
    """Each model's manifold robustness profile: accuracy under eigen (on the manifold),
    eigen-off-l2 (off it) and PGD-l2 at each l2 budget, and which of on and off fools more (when
    they differ by more than two standard errors; else neither).

    Example: manifoldadv profile runs/mnist-std.safetensors runs/mnist-eigen.safetensors --data-root DATA
    --examples 2000 --plot-dir figures
    """
    dev = run.start()
    refs, data_name, metas = classifiers(run, checkpoints, data, weights, normalize)
    grid = P.parse_grid(eps_grid, data_name)
    names = [r.label for r in refs]
    figures = [outputs.check_figure(plot_dir / f"{n.replace(':', '-')}-profile.png") for n in names] if plot_dir else []
    ds = load_data(data_name, run.data_root, run.limit, run.download)
    loaded = load_classifiers(refs, ds, dev)
    found = eigenbasis(ds, k, basis, dev)
    test = ds.test.head(examples) if examples else ds.test
    bs = batch_size or defaults(data_name).eval_batch_size
    compiled = accel.resolve_compile(run.compile, dev, "eval")
    results = []
    for model, rec in loaded:
        model = accel.prepare(model, precision=run.precision, compile=compiled, device=dev)
        with console.doing(f"while profiling {rec['ref']}", "profile writes its figures at the end"):
            res = P.profile(model, test, found, grid, data_name, device=dev, seed=run.seed, batch_size=bs,
                            steps=steps, restarts=restarts, label=rec["label"])
        results.append({"checkpoint": rec["ref"], "sha256": rec["origin"]["sha256"], "mode": rec["mode"],
                        "label": rec["label"], "origin": rec["origin"], **res})
    with outputs.together():
        for res, fig in zip(results, figures):
            P.plot(fig, res, f"{data_name} {res['label']}: n {len(test)}, "
                             f"k {found.k}")
    for fig in figures:
        console.log(f"wrote {fig}")
    if run.json_out:
        console.emit_json({"dataset": data_name, "data": describe_data(ds), "n": len(test), "test_digest": split_digest(test), "seed": run.seed,
                           "versions": versions(), "eps_grid": grid,
                           "eigenbasis": found.describe(), **accel.record(run.precision, compiled),
                           "models": results})
        return
    for res in results:
        console.out.print(render(res["label"], res))
