"""One Markdown page from the eigenspace measurements of a data set: the `profile` documents (the
robust accuracy on, off and across the manifold at each l2 budget), the `attack` document of the
eigenspace attacks at their default budgets (what the box did to their perturbations) and the
`spectrum` document of the eigen-robust set (Figure 2's ratios per class). Reads JSON only: no
data, no model, seconds.

    python experiments/eigen_summary.py --profile results/mnist-eigen/profile-*.json \
        --attack results/mnist-eigen/box.json --spectrum results/mnist-eigen/spectrum.json \
        --table2 results/mnist-eigen/table2-eigen.json --out results/mnist-eigen/summary.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from manifoldadv.runtime.outputs import atomic_write_text
from manifoldadv.study.tables import md_table


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def profile_md(docs: list[dict]) -> list[str]:
    out = []
    for doc in docs:
        basis = doc["eigenbasis"]
        for m in doc["models"]:
            rows = [[f"{eps:g}", *(pct(m["curves"][n][i]) for n in ("eigen", "eigen-off-l2", "l2")),
                     m["more_fooled_by"][i]] for i, eps in enumerate(m["eps"])]
            out += [f"**{m['mode']}** ({m['checkpoint']}; clean {pct(m['clean'])}; {doc['n']} test images, "
                    f"k {basis['k']}, seed {doc['seed']})", "",
                    md_table(["l2 eps", "on (eigen)", "off (eigen-off-l2)", "PGD-l2", "fools more (2 se)"], rows), ""]
    return out


def box_md(doc: dict) -> list[str]:
    rows = [[r["mode"] or Path(r["checkpoint"]).stem, r["attack"], f"{r['norm']} {r['eps']:g}", pct(r["accuracy"]),
             pct(r["subspace_share"]), pct(r["box_kept"])] for r in doc["results"] if "subspace_share" in r]
    return ["The share of the final perturbations' squared norm in the intended subspace after the clamp to "
            "[0, 1] ('in subspace'), and their squared norm over that before the clamp ('kept'), on "
            f"{doc['n']} test images:", "", md_table(["model", "attack", "budget", "accuracy", "in subspace", "kept"], rows),
            ""]


def spectrum_md(doc: dict) -> list[str]:
    rows = [r for r in doc["summary"] if r["reference"] == "clean"]
    out = []
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == name]
        gm = lambda k: math.exp(sum(math.log(r[k]) for r in mine) / len(mine))  # noqa: E731
        body = [[str(r["class"]), f"{r['top_ratio']:.3g}", f"{r['tail_ratio']:.3g}", pct(r["top_energy"])]
                for r in mine]
        body.append(["all (geometric mean; energy: mean)", f"{gm('top_ratio'):.3g}", f"{gm('tail_ratio'):.3g}",
                     pct(sum(r["top_energy"] for r in mine) / len(mine))])
        out += [f"**{name}** against the clean test set (top {doc['top']}, floor {doc['floor_rel']:g} x the clean "
                "class's largest):", "",
                md_table(["class", f"top-{doc['top']} ratio", "tail ratio", f"perturbation in top {doc['top']}"], body),
                ""]
    return out


def table2_md(doc: dict) -> list[str]:
    """Table 2's regular-vs-eigenspace half from an `attack` document of PGD-adv, eigen-adv and
    joint-eigen under pgd and eigen, with the joint model's drops."""
    acc = {(r["mode"], r["attack"]): r["accuracy"] for r in doc["results"]}
    models = ("pgd", "eigen", "joint-eigen")
    rows = [[attack] + [pct(acc[(m, attack)]) for m in models] for attack in ("clean", "pgd", "eigen")
            if all((m, attack) in acc for m in models)]
    drops = {a: acc[(a, a)] - acc[("joint-eigen", a)] for a in ("pgd", "eigen")}
    return [f"Accuracy on {doc['n']} test images (columns: PGD-adv, eigen-adv, joint (PGD+eigen)):", "",
            md_table(["attack", "PGD-adv", "eigen-adv", "joint (PGD+eigen)"], rows), "",
            f"The joint model loses {100 * drops['pgd']:+.1f} pp under PGD against PGD-adv and "
            f"{100 * drops['eigen']:+.1f} pp under the eigen attack against eigen-adv (mean "
            f"{50 * (drops['pgd'] + drops['eigen']):+.1f} pp).", ""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", nargs="+", type=Path, required=True, help="`profile --json` documents")
    p.add_argument("--attack", type=Path, required=True, help="`attack --json` of the eigenspace attacks")
    p.add_argument("--spectrum", type=Path, required=True, help="`spectrum --json` with the eigen-robust set")
    p.add_argument("--table2", type=Path, help="`attack --json` of pgd and eigen on PGD-adv, eigen-adv, joint-eigen")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    try:
        profiles = [json.loads(f.read_text()) for f in a.profile]
        attack, spectrum = json.loads(a.attack.read_text()), json.loads(a.spectrum.read_text())
        table2 = json.loads(a.table2.read_text()) if a.table2 else None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lines = ["# Eigenspace attacks: on and off the manifold", "",
             "## Robust accuracy against l2 budgets (`manifoldadv profile`)", "", *profile_md(profiles),
             "## What the box does", "", *box_md(attack),
             "## The eigen-robust set's spectrum (Figure 2)", "", *spectrum_md(spectrum)]
    if table2 is not None:
        lines += ["## Table 2: regular vs eigenspace", "", *table2_md(table2)]
    atomic_write_text(a.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
