"""Table 2 computed once and described once: `drops` is the trade-off formula for our numbers
and the paper's alike, and a `Table` (title, header, rows of text, note) renders both as
Markdown (report.md) and as a rich table (the `tradeoff` command)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..training import MODES
from . import paper, seeds

NAMES = {m.name: m.label for m in MODES.values()}
ATTACK_NAMES = {"clean": "clean data", "fgsm": "FGSM-attack", "pgd": "PGD-attack", "vae": "VAE-attack",
                "eigen": "eigen-attack (on-manifold l2)",
                "l1": "l1-attack", "l2": "l2-attack", "autoattack": "AutoAttack (l-inf)",
                "autoattack-l1": "AutoAttack (l1)"}


@dataclass(frozen=True)
class Half:
    """One half of Table 2: its models (columns), its rows (row -> the attack measured; each row
    is also the single model trained for that attack) and the joint model of the two."""

    key: str
    title: str
    models: tuple[str, ...]
    attacks: dict
    joint: str


# the l1 row is, per example, the worst of SLIDE and the gradient-free Pointwise attack, since
# l-inf training masks the l1 gradient (attacks/pointwise.py)
TABLE2 = {h.key: h for h in (
    Half("lp", "l1 vs l-inf", ("l1", "pgd", "joint-lp"), {"l1": "l1-worst", "pgd": "pgd"}, "joint-lp"),
    Half("gen", "regular vs generative", ("pgd", "vae", "joint"), {"pgd": "pgd", "vae": "vae"}, "joint"),
    Half("eigen", "regular vs eigenspace", ("pgd", "eigen", "joint-eigen"), {"pgd": "pgd", "eigen": "eigen"},
         "joint-eigen"),
)}


def drops(table2: dict) -> dict:
    """joint model -> the robust accuracy it loses, per attack, against the model trained for
    that attack alone, and their mean."""
    out = {}
    for key, half in TABLE2.items():
        if key not in table2:  # a study made before the half existed
            continue
        mat = table2[key]
        d = {row: mat[row][row] - mat[row][half.joint] for row in half.attacks}
        out[half.joint] = {**d, "mean": sum(d.values()) / len(d)}
    return out


def paper_drops(data: str) -> dict | None:
    ref = paper.table2(data)
    return drops(ref) if ref else None


def pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def pp(x) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} pp"


def cell(ours, theirs, fmt=pct) -> str:
    return fmt(ours) if theirs is None else f"{fmt(ours)} ({fmt(theirs)})"


def seeded(ours: float, theirs: float | None, spread: dict | None = None) -> str:
    """A cell as *ours ± spread (paper; verdict)* (seeds.against); a single measurement has no spread."""
    spread = spread or seeds.summarize([(0, 0, ours)])
    text = pct(ours) if spread["n"] < 2 else f"{pct(spread['mean'])} ± {100 * spread['std']:.2f}"
    if theirs is None:
        return text
    return f"{text} ({pct(theirs)}; {seeds.VERDICTS[seeds.against(spread, theirs)]})"


def cell_index(cells: list | None) -> dict:
    """results.json's cells as (attack, mode) -> cell."""
    return {(c["attack"], c["mode"]): c for c in cells or []}


@dataclass(frozen=True)
class Table:
    header: list
    rows: list
    title: str = ""
    note: str = ""


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(t: Table) -> str:
    return (f"*{t.title}*\n\n" if t.title else "") + md_table(t.header, t.rows) + (f"\n\n{t.note}" if t.note else "")


def rich(t: Table):
    from rich.table import Table as RichTable

    out = RichTable(title=t.title or None, caption=t.note or None)
    for i, h in enumerate(t.header):
        out.add_column(h, justify="left" if i == 0 else "right")
    for r in t.rows:
        out.add_row(*r)
    return out


def model_name(model: str, half: str) -> str:
    return {"pgd": "l-inf-adv" if half == "lp" else "PGD-adv"}.get(model, NAMES.get(model, model))


def attack_name(attack: str, half: str) -> str:
    return "l-inf-attack" if (half == "lp" and attack == "pgd") else ATTACK_NAMES.get(attack, attack)


def table2(trade: dict, data: str, cells: list | None = None) -> list[Table]:
    """Both halves, each cell *ours ± spread (paper; verdict)* (`seeded`; cells: results.json's)."""
    ref, index = paper.table2(data), cell_index(cells)
    out = []
    for key, half in TABLE2.items():
        if key not in trade:
            continue
        mat = trade[key]
        cols = list(next(iter(mat.values())).keys())
        rows = [[attack_name(a, key)] + [seeded(per_model[m], ref.get(key, {}).get(a, {}).get(m),
                                                index.get((half.attacks.get(a, a), m))) for m in cols]
                for a, per_model in mat.items()]
        names = [model_name(m, key) for m in cols]
        note = ""
        if key == "lp" and "l1_slide_only" in trade:
            slide = trade["l1_slide_only"]
            note = ("The l1-attack row is, per test example, the worst case of SLIDE (l1 PGD) and the "
                    "gradient-free Pointwise attack (`l1-worst`). SLIDE alone: "
                    + ", ".join(f"{names[cols.index(m)]} {pct(slide[m])}" for m in cols if m in slide) + ".")
        out.append(Table([""] + names, rows, title=half.title, note=note))
    return out


def drops_table(trade: dict, data: str) -> Table:
    ref = paper_drops(data) or {}
    d = trade["drops"]

    def c(model, key):
        return cell(d[model][key], ref.get(model, {}).get(key), pp)

    rows = [["joint (l1+l-inf) vs l1-adv / l-inf-adv", c("joint-lp", "l1"), c("joint-lp", "pgd"), c("joint-lp", "mean")],
            ["joint (PGD+VAE) vs PGD-adv / VAE-adv", c("joint", "pgd"), c("joint", "vae"), c("joint", "mean")]]
    if "joint-eigen" in d:
        rows.append(["joint (PGD+eigen) vs PGD-adv / eigen-adv", c("joint-eigen", "pgd"), c("joint-eigen", "eigen"),
                     c("joint-eigen", "mean")])
    return Table(["robust-accuracy drop of the joint model", "first attack", "second attack", "mean"], rows)
