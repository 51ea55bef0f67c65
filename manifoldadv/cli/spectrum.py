"""`manifoldadv spectrum`: per-class covariance eigen-spectra of the clean test set and of the
robust test sets built by attacking each checkpoint (the paper's Figure 2), with summary ratios."""

from __future__ import annotations

import io
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..runtime import accel, console, outputs, versions
from ..runtime.outputs import atomic_write_text
from ..attacks import ATTACKS
from ..errors import UsageError
from ..evaluation.spectrum import DEFAULT_FLOOR_REL, TOP, compute, dimension, plot, summarize_all, to_json
from ._app import app
from ..data.external import describe as describe_data
from ._options import DATA_HELP, DATA_OPTIONS, MODEL_OPTIONS, BasisFile, EigenEps, EigenK, Normalize, Run, Weights, shared
from .common import classifiers, dataset as load_data, eigenbasis, load_classifiers


# auto, none, and every registered attack but clean
SpectrumAttack = Enum("SpectrumAttack", {n: n for n in ("auto", *ATTACKS[1:], "none")}, type=str)


def parse_classes(text: str | None, num_classes: int) -> list[int]:
    if text is None:
        return list(range(num_classes))
    try:
        out = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UsageError(f"--classes takes comma-separated class indices, got {text!r}") from None
    if not out or out[0] < 0 or out[-1] >= num_classes:
        raise UsageError(f"--classes must be in 0..{num_classes - 1}, got {text!r}")
    return out


def render(sets, summary, top: int = TOP) -> Table:
    t = Table(title=f"eigenvalue ratios set/reference (top {top} and tail; geometric means, floored)")
    for col in ("set", "vs", "class", "n", "λ1 vs", "λ1 set", "top", "tail", "δ in top"):
        t.add_column(col, justify="left" if col in ("set", "vs") else "right")
    by_name = {s.name: s for s in sets}
    for r in summary:
        s, ref, c = by_name[r["set"]], by_name[r["reference"]], r["class"]
        energy = f"{100 * r['top_energy']:.1f}%" if "top_energy" in r else "-"
        t.add_row(r["set"], "clean" if ref.attack == "none" else "recon", str(c), str(int(s.counts[c])),
                  f"{ref.eigenvalues[c][0]:.3g}", f"{s.eigenvalues[c][0]:.3g}", f"{r['top_ratio']:.3g}",
                  f"{r['tail_ratio']:.3g}", energy)
    if summary:
        dim = dimension(sets)
        t.caption = (f"vs: the clean set or the CVAE's reconstructions (recon); δ in top: share of the "
                     f"perturbations' squared norm in the clean class's {top} leading eigen-directions "
                     f"(isotropic: {100 * top / dim:.1f}%)")
    return t


def write_csv(path: Path, sets) -> None:
    buf = io.StringIO()
    buf.write("set,checkpoint,attack,class,index,eigenvalue\n")
    for s in sets:
        for c, ev in s.eigenvalues.items():
            for i, v in enumerate(ev):
                buf.write(f"{s.name},{s.checkpoint or ''},{s.attack},{c},{i},{v:.17g}\n")
    atomic_write_text(path, buf.getvalue())


@app.command()
@shared(DATA_OPTIONS, MODEL_OPTIONS)
def spectrum(
    run: Run,
    checkpoints: Annotated[Optional[list[str]], typer.Argument(help="Classifiers, each adds a robust test set: checkpoints (.safetensors), factories package.module:function (weights from --weights) or torch.export programs (.pt2).", show_default=False)] = None,
    data: Annotated[Optional[str], typer.Option("--data", help=DATA_HELP + " Default: the checkpoints', else synthetic.")] = None,
    weights: Weights = None,
    normalize: Normalize = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Comma-separated classes (default: all).")] = None,
    attack: Annotated[SpectrumAttack, typer.Option("--attack", help="auto: the attack an on-manifold model was trained against (vae, eigen), PGD otherwise.")] = SpectrumAttack.auto,
    cvae: Annotated[Optional[Path], typer.Option("--cvae", dir_okay=False, help="CVAE for the vae attack (default: the one the checkpoint was trained with).")] = None,
    eps: Annotated[Optional[float], typer.Option("--eps", min=0.0, help="linf budget of the attack (default: the data set's test eps).")] = None,
    l2_eps: Annotated[Optional[float], typer.Option("--l2-eps", min=0.0)] = None,
    l1_eps: Annotated[Optional[float], typer.Option("--l1-eps", min=0.0)] = None,
    latent_eps: Annotated[Optional[float], typer.Option("--latent-eps", min=0.0)] = None,
    eigen_eps: EigenEps = None,
    k: EigenK = None,
    basis: BasisFile = None,
    plot_path: Annotated[Optional[Path], typer.Option("--plot", dir_okay=False, help="Write the Figure-2 style plot (.png, .pdf or .svg).")] = None,
    csv: Annotated[Optional[Path], typer.Option("--csv", dir_okay=False, help="Write every eigenvalue as CSV.")] = None,
    floor: Annotated[float, typer.Option("--floor", min=0.0, help="Eigenvalue floor, relative to the clean class's largest.")] = DEFAULT_FLOOR_REL,
    recon: Annotated[bool, typer.Option("--recon", help="Also measure the CVAE's reconstructions G(I(x)) and compare each latent-attack set with them (the perturbation's effect without the encode-decode loss).")] = False,
    top: Annotated[Optional[int], typer.Option("--top", min=1, help="How many leading eigenvalues form the 'top' (default 30; synthetic: its manifold rank).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 500,
) -> None:
    """Eigenvalues of each class's covariance: clean test set and robust test sets."""
    dev = run.start()
    if plot_path is not None:
        outputs.check_figure(plot_path, "plot")
    if csv is not None:
        outputs.check_file(csv, "CSV")
    refs, data_name, _ = classifiers(run, checkpoints or [], data, weights, normalize)
    data_name = data_name or "synthetic"
    ds = load_data(data_name, run.data_root, run.limit, run.download)
    loaded = load_classifiers(refs, ds, dev)
    cls = parse_classes(classes, ds.num_classes)
    top = top or ds.info.get("manifold_rank", TOP)
    compiled = accel.resolve_compile(run.compile, dev, "eval")
    sets = compute(loaded, ds, cls, dev, attack=attack, cvae=cvae, basis=lambda: eigenbasis(ds, k, basis, dev),
                   batch_size=batch_size, seed=run.seed,
                   reconstructions=recon, top=top, precision=run.precision, compile=compiled,
                   budgets={"linf": eps, "l2": l2_eps, "l1": l1_eps, "latent": latent_eps, "eigen": eigen_eps})
    summary = summarize_all(sets, floor_rel=floor, top=top)
    with outputs.together():
        if plot_path is not None:
            plot(plot_path, sets, cls, top=top, title=f"{data_name}: per-class covariance eigenvalues")
        if csv is not None:
            write_csv(csv, sets)
    for path in (plot_path, csv):
        if path is not None:
            console.log(f"wrote {path}")
    if run.json_out:
        console.emit_json({"dataset": data_name, "data": describe_data(ds),
                           "models": [{"checkpoint": rec["ref"], "label": rec["label"], "origin": rec["origin"]}
                                      for _, rec in loaded],
                           "versions": versions(), **accel.record(run.precision, compiled),
                           **to_json(sets, summary, cls, floor, top)})
        return
    if summary:
        console.out.print(render(sets, summary, top))
    else:
        for c, ev in sets[0].eigenvalues.items():
            console.out.print(f"class {c}: n={int(sets[0].counts[c])}  top eigenvalues "
                              + ", ".join(f"{v:.3g}" for v in ev[:5]) + f"  ...  smallest {ev[-1]:.3g}")
