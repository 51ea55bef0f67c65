"""The reproduction report: markdown tables next to the paper's numbers, and the heat map."""

from __future__ import annotations

import math

from . import paper
from .outputs import save_figure

NAMES = {"std": "Std training", "fgsm": "FGSM-adv", "pgd": "PGD-adv", "vae": "VAE-adv", "joint": "joint (PGD+VAE)",
         "l1": "l1-adv", "joint-lp": "joint (l1+linf)"}
ATTACK_NAMES = {"clean": "clean data", "fgsm": "FGSM-attack", "pgd": "PGD-attack", "vae": "VAE-attack",
                "l1": "l1-attack", "l2": "l2-attack"}


def pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def cell(ours, theirs) -> str:
    return pct(ours) if theirs is None else f"{pct(ours)} ({pct(theirs)})"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table1_md(table1: dict, data: str) -> str:
    ref = paper.table1(data)
    cols = list(next(iter(table1.values())).keys())
    rows = []
    for attack, per_model in table1.items():
        rows.append([ATTACK_NAMES.get(attack, attack)] +
                    [cell(per_model[m], ref.get(attack, {}).get(m)) for m in cols])
    return _md_table([data.upper() if data != "synthetic" else "synthetic"] + [NAMES.get(m, m) for m in cols], rows)


def table2_md(tradeoff: dict, data: str) -> str:
    ref = paper.table2(data)
    out = []
    for half, label in (("lp", "l1 vs l-inf"), ("gen", "regular vs generative")):
        mat = tradeoff[half]
        cols = list(next(iter(mat.values())).keys())
        rows = []
        for attack, per_model in mat.items():
            rows.append([ATTACK_NAMES.get(attack, attack).replace("PGD-attack", "l-inf-attack" if half == "lp" else "PGD-attack")] +
                        [cell(per_model[m], ref.get(half, {}).get(attack, {}).get(m)) for m in cols])
        names = [{"pgd": "l-inf-adv" if half == "lp" else "PGD-adv"}.get(m, NAMES.get(m, m)) for m in cols]
        out.append(f"*{label}*\n\n" + _md_table([""] + names, rows))
        if half == "lp" and "l1_slide_only" in tradeoff:
            slide = tradeoff["l1_slide_only"]
            out.append("The l1-attack row is, per test example, the worst case of SLIDE (l1 PGD) and the "
                       "gradient-free Pointwise attack (`l1-worst`). SLIDE alone: "
                       + ", ".join(f"{names[cols.index(m)]} {pct(slide[m])}" for m in cols if m in slide) + ".")
    return "\n\n".join(out)


def paper_drops(data: str) -> dict | None:
    ref = paper.table2(data)
    if not ref:
        return None
    lp, gen = ref["lp"], ref["gen"]
    d_lp = [lp["l1"]["l1"] - lp["l1"]["joint-lp"], lp["pgd"]["pgd"] - lp["pgd"]["joint-lp"]]
    d_gen = [gen["pgd"]["pgd"] - gen["pgd"]["joint"], gen["vae"]["vae"] - gen["vae"]["joint"]]
    return {"joint-lp": {"l1": d_lp[0], "pgd": d_lp[1], "mean": sum(d_lp) / 2},
            "joint": {"pgd": d_gen[0], "vae": d_gen[1], "mean": sum(d_gen) / 2}}


def drops_md(tradeoff: dict, data: str) -> str:
    ref = paper_drops(data) or {}
    d = tradeoff["drops"]

    def pp(x):
        return "n/a" if x is None else f"{100 * x:+.1f} pp"

    def c(model, key):
        theirs = ref.get(model, {}).get(key)
        return pp(d[model][key]) + ("" if theirs is None else f" ({pp(theirs)})")

    rows = [["joint (l1+l-inf) vs l1-adv / l-inf-adv", c("joint-lp", "l1"), c("joint-lp", "pgd"), c("joint-lp", "mean")],
            ["joint (PGD+VAE) vs PGD-adv / VAE-adv", c("joint", "pgd"), c("joint", "vae"), c("joint", "mean")]]
    return _md_table(["robust-accuracy drop of the joint model", "first attack", "second attack", "mean"], rows)


def spectra_md(summary: list[dict], top: int) -> str:
    pairs = list(dict.fromkeys((r["set"], r["reference"]) for r in summary))
    pct = lambda v: f"{100 * v:.1f}%" if v is not None else ""  # noqa: E731
    rows = []
    for s, ref in pairs:
        rs = [r for r in summary if (r["set"], r["reference"]) == (s, ref)]
        gm = lambda k: math.exp(sum(math.log(r[k]) for r in rs) / len(rs))  # noqa: E731
        energy = [r["top_energy"] for r in rs if "top_energy" in r]
        rows.append([s, ref, "all (geometric mean; energy: mean)", f"{gm('top_ratio'):.3g}", f"{gm('tail_ratio'):.3g}",
                     pct(sum(energy) / len(energy) if energy else None)])
        rows += [["", "", str(r["class"]), f"{r['top_ratio']:.3g}", f"{r['tail_ratio']:.3g}", pct(r.get("top_energy"))]
                 for r in rs]
    return _md_table(["set", "against", "class", f"top-{top} ratio", "tail ratio", f"perturbation in top {top}"], rows)


def theory_md(rows: list[dict]) -> str:
    n_pass = sum(r["passed"] for r in rows)
    # results.json stores non-finite numbers as null (strict JSON): a rejected paper form has z = inf
    body = [[r["check"], r["case"], "non-finite" if r["error"] is None else f"{r['error']:.3g}",
             f"{r['tolerance']:.3g} ({r['kind']})",
             "pass" if r["passed"] else "FAIL"] for r in rows]
    return f"{n_pass}/{len(rows)} checks pass.\n\n" + _md_table(["check", "spectrum", "error", "tolerance", ""], body)


def heatmap(path, table: dict, title: str) -> None:
    """Attack (rows) x defence (columns) accuracies as a heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(table)
    cols = list(next(iter(table.values())).keys())
    m = np.array([[table[r][c] for c in cols] for r in rows])
    fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 2, 0.8 * len(rows) + 1.6))
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), [NAMES.get(c, c) for c in cols], rotation=20, ha="right")
    ax.set_yticks(range(len(rows)), [ATTACK_NAMES.get(r, r) for r in rows])
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{100 * m[i, j]:.1f}", ha="center", va="center", color="w" if m[i, j] < 0.6 else "k")
    ax.set_xlabel("defence (training mode)")
    ax.set_ylabel("attack")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="test accuracy")
    fig.tight_layout()
    save_figure(fig, path)
