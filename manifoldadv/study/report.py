"""The reproduction report: markdown tables next to the paper's numbers, and the heat map."""

from __future__ import annotations

import math

from . import claims, paper, seeds
from ..attacks import describe
from ..runtime.outputs import save_figure
from ..training import mode as mode_kind
from .tables import ATTACK_NAMES, NAMES, TABLE2, cell_index, drops_table, markdown, md_table, pct, seeded, table2


def table1_md(table1: dict, data: str, cells: list | None = None) -> str:
    ref, index = paper.table1(data), cell_index(cells)
    cols = list(next(iter(table1.values())).keys())
    rows = []
    for attack, per_model in table1.items():
        rows.append([ATTACK_NAMES.get(attack, attack)] +
                    [seeded(per_model[m], ref.get(attack, {}).get(m), index.get((attack, m))) for m in cols])
    return md_table([data.upper() if data != "synthetic" else "synthetic"] + [NAMES.get(m, m) for m in cols], rows)


def table2_md(tradeoff: dict, data: str, cells: list | None = None) -> str:
    return "\n\n".join(markdown(t) for t in table2(tradeoff, data, cells))


def claims_md(r: dict) -> list[str]:
    rows = claims.claims(r)
    if not rows:
        return []
    return ["## Claims", "", "Each of the paper's claims decided from this run's numbers (rules: "
            "`manifoldadv/study/claims.py`; ± is one standard deviation over the seeds below).", "",
            md_table(["claim", "verdict", "numbers"], [[c["claim"], f"**{c['verdict']}**", c["evidence"]] for c in rows]),
            ""]


def seeds_md(r: dict) -> list[str]:
    sd = r.get("seeds") or {}
    ev, tr, modes = sd.get("eval", [r["seed"]]), sd.get("train", [r["seed"]]), sd.get("seeded_modes", [])
    text = (f"Cells read *mean ± standard deviation (paper; verdict)*. Evaluation seeds {', '.join(map(str, ev))} "
            "(the random starts and draws of every random attack; clean, FGSM and the latent FGSM are deterministic "
            "and measured once per model)")
    text += (f"; training seeds {', '.join(map(str, tr))} for {', '.join(NAMES.get(m, m) for m in modes)} (each seed "
             "trains its own generator too), seed " + str(r["seed"]) + " for the other models." if modes and len(tr) > 1
             else f"; every model trained once, with seed {r['seed']}.")
    text += (f" Verdict against the paper: *within spread* when our mean is within {seeds.SPREADS:g} standard "
             f"deviations of the paper's number, else *within 5 pp*, else *off*.")
    return [text, ""]


def off_md(r: dict) -> list[str]:
    """Every cell off the paper by more than 5 pp, with what we know of why."""
    ref1, ref2 = paper.table1(r["data"]), paper.table2(r["data"])
    index = cell_index(r.get("cells"))
    found = {}
    for attack, per_model in r["table1"].items():
        for m, v in per_model.items():
            if ref1.get(attack, {}).get(m) is not None:
                found[(attack, m)] = (v, ref1[attack][m])
    for key, half in TABLE2.items():
        for row, per_model in r["tradeoff"].get(key, {}).items():
            for m, v in per_model.items():
                theirs = ref2.get(key, {}).get(row, {}).get(m)
                if theirs is not None:
                    found.setdefault((half.attacks.get(row, row), m), (v, theirs))
    lines = []
    for (attack, m), (v, theirs) in found.items():
        c = index.get((attack, m)) or seeds.summarize([(0, 0, v)])
        if seeds.against(c, theirs) != "off":
            continue
        known = claims.why(r, attack, m)
        lines.append(f"- {NAMES.get(m, m)} under {ATTACK_NAMES.get(attack, attack)}: {seeded(v, None, c)} against "
                     f"{pct(theirs)} ({100 * (c['mean'] - theirs):+.1f} pp). "
                     + ("Known differences: " + "; ".join(known) + "." if known else "No known cause."))
    if not lines:
        return []
    return ["**Cells off the paper by more than 5 pp**, and what differs from the paper's setting where we know it:",
            "", *lines, ""]


def drops_md(tradeoff: dict, data: str) -> str:
    return markdown(drops_table(tradeoff, data))


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
    return md_table(["set", "against", "class", f"top-{top} ratio", "tail ratio", f"perturbation in top {top}"], rows)


def eigen_md(r: dict) -> list[str]:
    """The eigenspace attacks: the basis, and what the box [0, 1] did to each evaluation's perturbations."""
    rows = [e for e in r["evaluations"] if "subspace_share" in e]
    basis = r.get("eigenbasis")
    if not rows or not basis:
        return []
    several = len({e.get("eval_seed") for e in rows}) > 1  # then one row per evaluation seed: say which

    def model(e):
        return NAMES.get(e["mode"], e["mode"]) + (f" (evaluation seed {e['eval_seed']})" if several else "")

    body = [[model(e), describe(e), pct(e["accuracy"]), f"{100 * e['subspace_share']:.1f}%",
             f"{100 * e['box_kept']:.1f}%"] for e in rows]
    return ["## Eigenspace attacks and the box", "",
            f"Each class's eigenspace: the top {basis['k']} eigenvectors of its training covariance, holding "
            f"{100 * basis['explained_mean']:.1f}% of its variance on average (least: {100 * basis['explained_min']:.1f}%). "
            "The attack moves inside the subspace (or orthogonally to it) and the image is then clamped to [0, 1]; "
            "'in subspace' is the share of the final perturbations' squared norm that stays in the intended "
            "subspace, 'kept' their squared norm over that before the clamp.", "",
            md_table(["model", "attack", "accuracy", "in subspace", "kept"], body), ""]


def theory_md(rows: list[dict]) -> str:
    n_pass = sum(r["passed"] is True for r in rows)
    n_na = sum(r["passed"] is None for r in rows)  # a check that cannot apply to this case
    # results.json stores non-finite numbers as null (strict JSON): a rejected paper form has z = inf
    def error(r):
        if r["passed"] is None:
            return "n/a"
        return "non-finite" if r["error"] is None else f"{r['error']:.3g}"

    body = [[r["check"], r["case"], error(r), f"{r['tolerance']:.3g} ({r['kind']})",
             {True: "pass", False: "FAIL", None: "n/a"}[r["passed"]]] for r in rows]
    na = f" ({n_na} not applicable)" if n_na else ""
    return f"{n_pass}/{len(rows)} checks pass{na}.\n\n" + md_table(["check", "spectrum", "error", "tolerance", ""], body)


def autoattack_note(r: dict) -> list[str]:
    aa = r.get("autoattack")
    if not aa:
        return []
    return ["", f"AutoAttack rows (here and in Table 2): the authors' standard version (`pyautoattack`), on the first "
                f"{aa['examples']} test examples; the other rows on all {r['n_test']}."
                + (f" A quick run leaves out {', '.join(aa['skipped'])} (the costliest; run without --quick)."
                   if aa.get("skipped") else "")]


def audit_md(audit: dict) -> str:
    """Rows: checks; columns: models; then each failed check's detail."""
    models = audit["models"]
    first = next(iter(models.values()))
    rows = [[f"({c['key']}) {c['check']}"] + [m[i]["verdict"] for m in models.values()] for i, c in enumerate(first)]
    fails = [f"- {NAMES.get(mode, mode)} ({c['key']}): {c['detail']}" for mode, checks in models.items()
             for c in checks if c["verdict"] == "FAIL"]
    text = (f"Cheap checks for gradient masking and weak attacks, on the first {audit['examples']} test examples "
            f"(the `audit` command's thresholds; FAIL is a strong sign, not a proof).\n\n")
    text += md_table(["check"] + [NAMES.get(m, m) for m in models], rows)
    return text + ("\n\nFailed checks:\n\n" + "\n".join(fails) if fails else "\n\nNo check failed.")


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


def generator_note(r: dict) -> str:
    g = r.get("generator")
    if not g:
        return ""
    return (f" Generator of the latent attacks and of VAE-adv and joint training: `{g['model']}` (latent "
            f"{(g.get('model_kwargs') or {}).get('latent')}, {g.get('active_units')} active units), latent budget "
            f"{g['latent_eps']:.3g} per coordinate (the data set's, scaled by the square root of the latent size ratio).")


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def render(r: dict) -> str:
    """report.md from a study's results.json document."""
    data = r["data"]
    quick = " (QUICK smoke run: short schedules and subsets, not the paper's settings)" if r["quick"] else ""
    if r.get("train_steps_override"):
        quick += f" (adversarial training with {r['train_steps_override']} PGD steps instead of the paper's)"
    lines = [
        f"# manifoldadv reproduction: {data}{quick}",
        "",
        f"Seed {r['seed']}, device {r['device']} ({r.get('precision', 'fp32')}"
        f"{', compiled training' if (r.get('compile') or {}).get('train') else ''}"
        f"{', compiled evaluation' if (r.get('compile') or {}).get('eval') else ''}), "
        f"{r['n_train']} training and {r['n_test']} test examples "
        f"({r['n_test_spectra']} for the spectra), "
        f"joint strategy `{r['strategy']}`. Wall time of this invocation {_hms(r['wall_seconds_this_run'])}; "
        f"compute recorded in the artefacts (training {_hms(r['train_seconds_recorded'])}, evaluation "
        f"{_hms(r['eval_seconds_recorded'])}, total {_hms(r['compute_seconds_recorded'])}).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".",
        "",
        "The paper's numbers are its Tables 1 and 2"
        + (" (the paper has none for this data set)." if not r["table1_paper"] else ".")
        + generator_note(r),
        "",
        *claims_md(r),
        "## Table 1: test accuracy under each attack (rows) for each defence (columns)",
        "",
        *seeds_md(r),
        table1_md(r["table1"], data, r.get("cells")),
        *autoattack_note(r),
        "",
        "![attack x defence](figures/attack_defence.png)",
        "",
        "## Table 2: robustness trade-offs",
        "",
        table2_md(r["tradeoff"], data, r.get("cells")),
        "",
        *off_md(r),
        "**Measured trade-off** (how much robust accuracy each joint model gives up against the model "
        "trained for that attack alone; paper in parentheses):",
        "",
        drops_md(r["tradeoff"], data),
        "",
    ]
    d = r["tradeoff"]["drops"]
    lines += [f"The l1/l-inf conflict costs {100 * d['joint-lp']['mean']:.1f} pp on average, the regular/generative "
              f"conflict {100 * d['joint']['mean']:.1f} pp"
              + (f", the regular/eigenspace conflict {100 * d['joint-eigen']['mean']:.1f} pp" if "joint-eigen" in d else "")
              + ".", ""]
    lines += eigen_md(r)
    sp = r["spectra"]
    lines += [
        "## Spectra of the clean and robust test sets (Figure 2)",
        "",
        f"Per class, the eigenvalues of a set divided by those of the set it is measured against (both sorted "
        f"descending), averaged geometrically over the top {sp['top']} and over the tail; eigenvalues below "
        f"{sp['floor_rel']:g} x the reference class's largest count as that floor. The paper's claim: the "
        f"PGD-robust set lifts the tail (small-variance directions) and not the top; the VAE-robust set lifts the "
        f"top and not the tail; so should the eigen-robust set (the eigenspace attack against eigen-adv), whose "
        f"perturbations lie in the top {r.get('eigenbasis', {}).get('k', 'k')} eigen-directions by construction. The latent attack starts from the CVAE's reconstructions G(I(x)) (dashed in the "
        f"figure), so its set is also measured against them: by Lemma 1 it is x0 + W dz with x0 from the "
        f"encode-decode distribution D', and the rows against the reconstructions show the perturbation W dz "
        f"alone, the rows of the reconstructions against the clean set the change D -> D'. The last column says "
        f"where the perturbations point: the share of their squared norm (x_adv - x; for the latent attack "
        f"G(z') - G(I(x))) that lies in the clean class's {sp['top']} leading eigen-directions, against "
        f"{100 * sp['top'] / sp['dim']:.1f}% for isotropic noise.",
        "",
        spectra_md(sp["summary"], sp["top"]),
        "",
        "![spectra](figures/spectra.png)",
        "",
        "All classes: [figures/spectra_all.png](figures/spectra_all.png).",
        "",
    ]
    if r.get("audit"):
        lines += ["## Audit of every model (`manifoldadv audit`)", "", audit_md(r["audit"]), ""]
    if r["theory"]:
        th = r["theory"]
        lines += ["## Theory checks (`manifoldadv theory verify`)", "",
                  f"Monte Carlo with {th['samples']} samples per check.", "", theory_md(th["checks"]), "",
                  "![theory](figures/theory.png)", ""]
    lines += ["## Configuration", "", "| model | epochs | clean accuracy / CVAE -ELBO | training time | settings |",
              "|---|---|---|---|---|"]
    for mode, m in r["models"].items():
        hp = m["hparams"]
        acc = pct(m["clean_accuracy"]) if "clean_accuracy" in m else f"{m.get('test_nelbo') or float('nan'):.2f} nats"
        attacks = "; ".join(describe(a, step_size=True) for a in hp.get("attacks", []))
        settings = (f"{hp['model']}, batch {hp['batch_size']}, lr {hp['lr']:g}, wd {hp['weight_decay']:g}"
                    + (f", adversarial from epoch {hp['adv_start'] + 1}: {attacks}" if attacks else "")
                    + (f", strategy {hp['strategy']}" if mode_kind(mode).joint else ""))
        lines.append(f"| {mode} | {m['epochs']} | {acc} | {_hms(m['train_seconds'])} | {settings} |")
    lines += ["", "Evaluation attacks: "
              + "; ".join(sorted({describe(e, step_size=True) for e in r["evaluations"] if e["attack"] != "clean"})) + ".", ""]
    return "\n".join(lines)
