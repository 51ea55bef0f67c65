"""`manifoldadv theory ...`: the Gaussian-mixture theory (section 4, appendices A and C; spec
THEORY.md) in closed form, each result beside an independent numerical computation. This module
parses the options, calls ``manifoldadv.theory`` and renders the documents it returns."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from ..runtime import console, distributed, outputs
from .. import theory as T
from ..errors import UsageError
from ..theory import reports as R
from ..theory.spectra import DEFAULT_EIGENVALUES, describe, resolve_spectrum
from ._app import app
from ._options import DataRoot, Device, Json, Quiet, Seed, shared

theory_app = typer.Typer(
    name="theory",
    help="The Gaussian-mixture theory in closed form (P-PCA, Lemma 1, Theorems 2-9), each result "
    "checked numerically (Monte Carlo, scipy optimisation, fixed point, gradient descent-ascent).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(theory_app, name="theory")

SIMULATE_EIGENVALUES = "5,4,3,2,1.5,1,0.75,0.5"


class Inner(str, Enum):
    exact = "exact"
    ascent = "ascent"


Eigenvalues = Annotated[
    Optional[str],
    typer.Option("--eigenvalues", help="Comma-separated eigenvalues of Sigma*, e.g. 4,2,1,0.5 (the default)."),
]
Spectrum = Annotated[
    Optional[str],
    typer.Option(
        "--spectrum",
        help="FILE.npy (eigenvalues, or a covariance matrix), 'powerlaw' (lam_i = i^-alpha, with --d and "
        "--alpha), or 'mnist:K' (class K of the real MNIST training set, through the covariance op).",
    ),
]
Dim = Annotated[Optional[int], typer.Option("--d", min=1, help="Dimension for --spectrum powerlaw (default 784).")]
Alpha = Annotated[Optional[float], typer.Option("--alpha", help="Exponent for --spectrum powerlaw (default 1.0).")]
Q = Annotated[int, typer.Option("--q", min=1, help="Latent dimension of the P-PCA generator.")]
LOpt = Annotated[float, typer.Option("--L", help="Lagrange multiplier of the latent-space attack (larger: smaller budget).")]
LOrig = Annotated[float, typer.Option("--L-orig", help="Lagrange multiplier L' of the original-space attack.")]
StrategyOpt = Annotated[
    int, typer.Option("--strategy", min=1, max=3, help="Lemma 1 strategy: 1 encode/decode means, 2 sample z|x and x|z, 3 sample z ~ N(0, I).")
]
Samples = Annotated[
    Optional[int],
    typer.Option("--samples", min=0, help="Monte Carlo samples (0: no Monte Carlo; default 200000, fewer for d > 64, "
                "where the Monte Carlo runs in the eigenbasis instead of a random rotation of it)."),
]
DeviceOpt = Annotated[Device, typer.Option("--device", case_sensitive=False,
                                           help="Where to run: auto or cpu (the theory is float64 numpy on the CPU; "
                                                "cuda is refused).")]
LMin = Annotated[float, typer.Option("--L-min", help="Smallest L (and L'); > 1.")]
LMax = Annotated[float, typer.Option("--L-max", help="Largest L (and L').")]

# The options every theory command takes (in place of the other commands' RUN_OPTIONS)
THEORY_OPTIONS = {"eigenvalues": (Eigenvalues, None), "spectrum": (Spectrum, None), "d": (Dim, None),
                  "alpha": (Alpha, None), "data_root": (DataRoot, None), "q": (Q, 2), "seed": (Seed, 0),
                  "device": (DeviceOpt, Device.auto), "quiet": (Quiet, False), "json_out": (Json, False)}


class Inputs:
    """The ``THEORY_OPTIONS`` of one invocation as attributes, with --quiet applied and --device
    and torchrun checked."""

    def __init__(self, **options):
        self.__dict__.update(options)
        console.set_quiet(self.quiet)
        if distributed.launched():  # nothing to split: closed forms and float64 numpy
            raise UsageError("theory runs in one process: run it without torchrun")
        if self.device == "cuda":
            raise UsageError("theory runs in float64 numpy on the CPU: --device cuda is not supported (auto or cpu)")

    def resolve(self, default: str = DEFAULT_EIGENVALUES) -> tuple[np.ndarray, str]:
        return resolve_spectrum(self.eigenvalues, self.spectrum, self.d, self.alpha, self.data_root, default)

    def emit(self, doc: dict) -> bool:
        """Print the document as JSON with --json; True when done."""
        if self.json_out:
            console.emit_json(doc)
        return self.json_out


def command(name: str | None = None, *, q: int = 2):
    """``fn(inputs, **own_options)`` as ``theory NAME``, with the shared options of every theory
    command (the same mechanism as the other commands: `_options.shared`)."""
    def register(fn):
        return theory_app.command(name)(shared(base=THEORY_OPTIONS, options=Inputs, defaults={"q": q})(fn))
    return register


def _f(x, digits: int = 4) -> str:
    return "-" if x is None else f"{float(x):.{digits}g}"  # nan, inf and -inf as such


def _ratio(x) -> str:
    return "-" if math.isnan(x) else _f(x)  # undefined where lambda = 0


def _mc(m) -> str:
    return "-" if m is None else f"{_f(m['mean'])} ± {_f(m['stderr'], 2)}"


def _table(title: str, columns, left: tuple = ()) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right")
    return table


def _eigen_rows(table: Table, d: int, row, limit: int = 24) -> None:
    """One row per eigenvalue index (1-based label first); beyond ``limit`` the first and last
    halves with an ellipsis row between."""
    shown = list(range(d)) if d <= limit else [*range(limit // 2), None, *range(d - limit // 2, d)]
    for i in shown:
        table.add_row(*(["...", *[""] * (len(table.columns) - 1)] if i is None else [str(i + 1), *row(i)]))


@command()
def strategies(inp: Inputs, samples: Samples = None) -> None:
    """Lemma 1: Lambda^(1..3) per eigenvalue, and whether (2) and (3) coincide.

    Beside the closed forms, the second moments of x' sampled by each strategy's definition
    (Monte Carlo, random rotation of the eigenbasis)."""
    lam, source = inp.resolve()
    out = R.strategies_report(lam, source, inp.q, samples, inp.seed)
    if inp.emit(out):
        return
    sp, mc, top = out["strategies"], out["monte_carlo"], lam.max()
    table = _table(f"Lemma 1: x' ~ N(mu*, U diag(Lambda^(j)) U^T)  ({escape(source)}, q={inp.q}, "
                   f"sigma2={_f(out['spectrum']['sigma2'])})",
                   ["i", "lambda_i", "Lambda(1)", "Lambda(2)", "Lambda(3)"] + ([f"MC var ({j})" for j in "123"] if mc else []))
    # round-off (|x| <= 1e-12 lambda_max) is shown as 0
    _eigen_rows(table, lam.size, lambda i: [_f(lam[i]), *(_f(sp[j][i]) for j in "123")]
                + ([_f(v if abs(v) > 1e-12 * top else 0.0) for v in (mc[j]["variance"][i] for j in "123")] if mc else []))
    console.out.print(table)
    console.out.print(f"Lambda(2) == Lambda(3): {'yes' if out['coincide_2_3'] else 'NO'} "
                      f"(max |difference| {_f(out['max_abs_diff_2_3'])}; the strategy-2 expression simplifies to lambda_i)")
    if out["rank_q"]:
        console.out.print(f"rank(Sigma*) <= q: sigma2 = 0 and all three equal Lambda*: "
                          f"{'yes' if out['all_equal_eigenvalues'] else 'NO'}")
    for j in "123" if mc else ():
        r = mc[j]
        console.out.print(f"Monte Carlo strategy {j}: max |z| {r['max_z']:.2f} over the {r['entries']} "
                          f"(threshold {r['z_threshold']:.2f}, n={mc['n']})")


@command("excess-risk")
def excess_risk(inp: Inputs, L: LOpt = 4.0, L_orig: LOrig = 4.0, strategy: StrategyOpt = 1,
                samples: Samples = None) -> None:
    """Theorems 2 and 4: excess risk of the optimal latent / original-space attack at Theta*.

    Both parts of Theorem 2 (the change-of-distribution part in the correct form and as the
    paper states it), Corollary 3's value, Theorem 4 with the paper's bounds, each beside a
    Monte Carlo estimate."""
    R.check_multipliers(L, L_orig)
    lam, source = inp.resolve()
    out = R.excess_risk_report(lam, source, inp.q, L, L_orig, strategy, samples, inp.seed)
    if inp.emit(out):
        return
    lat, org = out["latent"], out["original"]
    parts, z = lat["monte_carlo_parts"] or {}, lat.get("z", {})
    table = _table(f"excess risk at Theta*  ({escape(source)}, q={inp.q}, L={L:g}, L'={L_orig:g}, strategy {strategy})",
                   ("quantity", "closed form", "Monte Carlo", "|z|"), left=("quantity",))
    for label, key in (("Thm 2 perturbation part", "perturbation"), ("Thm 2 change of distribution", "change_of_distribution")):
        table.add_row(label, _f(lat[key]), _mc(parts.get(key)), _f(z.get(key), 3))
    table.add_row("  ... as the paper states it", _f(lat["change_of_distribution_paper"]), "",
                  _f(z.get("change_of_distribution_paper"), 3))
    table.add_row("Thm 2 total (latent space)", _f(lat["total"]), _mc(lat["monte_carlo"]), _f(z.get("total"), 3))
    table.add_row("Cor 3 value if rank(Sigma*) = q", _f(lat["corollary3_if_rank_q"]), "", "")
    table.add_row("Thm 4 (original space)", _f(org["value"]), _mc(org["monte_carlo"]), _f(org.get("z"), 3))
    table.add_row("  proof's bounds t/2 .. d t/2", f"{_f(org['lower_bound'])} .. {_f(org['upper_bound'])}", "", "")
    table.add_row("  paper's orders (L' lam_min)^-2 .. d(L' lam_min)^-2",
                  f"{_f(org['paper_order_lower'])} .. {_f(org['paper_order_upper'])}", "", "")
    console.out.print(table)
    if math.isinf(org["value"]):
        console.out.print("Thm 4 is infinite: L' lam_min <= 1 (lam_min = 0 means data on a manifold; "
                          "the original-space attack leaves it).")


@command("saddle-point")
def saddle_point(inp: Inputs, L: LOpt = 4.0, L_orig: LOrig = 4.0, strategy: StrategyOpt = 1) -> None:
    """Theorems 5 and 6: saddle points of latent-space and original-space adversarial training.

    The learned eigenvalues, their amplification lambda^ls/lambda and lambda^r/lambda, and the
    residual of the fixed-point equations solved numerically."""
    R.check_multipliers(L, L_orig)
    lam, source = inp.resolve()
    out = R.saddle_report(lam, source, inp.q, L, L_orig, strategy)
    if inp.emit(out):
        return
    ls, r, Lam = out["latent"], out["original"], T.strategy_spectrum(lam, inp.q, strategy)
    table = _table(f"saddle points  ({escape(source)}, q={inp.q}, L={L:g}, L'={L_orig:g}, strategy {strategy})",
                   ("i", "lambda_i", "Lambda(j)_i", "lambda^ls (Thm 5)", "ls / lambda", "lambda^r (Thm 6)", "r / lambda"))
    _eigen_rows(table, lam.size, lambda i: [_f(lam[i]), _f(Lam[i]), _f(ls[i]), _ratio(out["latent_ratio"][i]), _f(r[i]),
                                            _ratio(out["original_ratio"][i])])
    console.out.print(table)
    fp = out["fixed_point"]
    console.out.print(f"fixed point solved numerically: residual {fp['latent_residual']:.2e} (latent), "
                      f"{fp['original_residual']:.2e} (original); vs closed form "
                      f"{fp['latent_vs_closed_form']:.2e}, {fp['original_vs_closed_form']:.2e}")
    console.out.print(f"for rank-q data lambda^ls/lambda = 1/2 + 1/L + sqrt(1/4 + 1/L) = {out['rank_q_ratio']:.4g} >= 1 "
                      "for i <= q: latent training amplifies the large-variance directions; lambda^r/lambda is "
                      "largest for the smallest lambda: original-space training amplifies the small-variance ones. "
                      "(ratios are undefined where lambda = 0)")


@command()
def rates(inp: Inputs, strategy: StrategyOpt = 1, L_min: LMin = 10.0, L_max: LMax = 10000.0,
          points: Annotated[int, typer.Option("--points", min=3, help="Values of L, log-spaced.")] = 13,
          samples: Annotated[int, typer.Option("--samples", min=0, help="Monte Carlo samples per L (0: none).")] = 20000,
          ) -> None:
    """Excess risk against L with fitted log-log slopes (-1; the paper says -2).

    Corollary 3 (on the rank-q truncation of the spectrum) and Theorem 4 (L' = L), exact and
    by Monte Carlo at each L."""
    R.check_L_range(L_min, L_max)
    lam, source = inp.resolve()
    with console.progress() as bar:
        task = bar.add_task("rates", total=points, status="")
        out = R.rates_report(lam, source, inp.q, strategy, L_min, L_max, points, samples, inp.seed,
                             step=lambda: bar.advance(task))
    if inp.emit(out):
        return
    c3, th4, Ls = out["corollary3"], out["theorem4"], out["L"]
    table = _table(f"excess risk against L  ({escape(source)}, q={inp.q}, strategy {strategy})",
                   ("L", "Cor 3 exact", "Cor 3 MC", "Thm 2 pert. part", "Thm 4 exact (L'=L)", "Thm 4 MC"))
    for i, Lv in enumerate(Ls):
        table.add_row(_f(Lv), _f(c3["value"][i]), _mc(c3.get("monte_carlo", [None] * Ls.size)[i]),
                      _f(out["latent_perturbation"]["value"][i]), _f(th4["value"][i]),
                      _mc(th4.get("monte_carlo", [None] * Ls.size)[i]))
    console.out.print(table)
    slope = _table("fitted log-log slopes (expected -1; the paper claims -2)",
                   ("result", "exact", "Monte Carlo", "last interval", "paper"), left=("result",))
    for label, part, paper in (("Cor 3: q(2L-1)/(2(L-1)^2)", c3, "O(q L^-2): -2"),
                               ("Thm 4: 1/2 sum (2L'l-1)/(L'l-1)^2", th4, "O(d (lam_min L')^-2): -2")):
        slope.add_row(label, _f(part["slope"]), _f(part.get("slope_monte_carlo")), _f(part["tail_slope"]), paper)
    slope.add_row("Thm 2 perturbation part", _f(out["latent_perturbation"]["slope"]), "", "", "")
    console.out.print(slope)
    console.out.print(f"Cor 3 = Thm 2 on the rank-q spectrum: max relative difference {c3['max_rel_diff']:.2e}")
    if th4["slope"] is None:
        console.out.print("Thm 4 is infinite over this range (L' lam_min <= 1): no slope")


@command()
def augmentation(inp: Inputs,
                 n: Annotated[int, typer.Option("--n", min=2, help="Real samples.")] = 100,
                 m: Annotated[int, typer.Option("--m", min=0, help="Generated samples (from the P-PCA fitted to the n real ones).")] = 1000,
                 ) -> None:
    """Theorem 8: augmenting n real samples with m generated ones.

    The top q eigenvalues stay, the others are pulled towards their mean (the generator does
    not help). Checked by minimising the mixed objective with scipy (d <= 16) and by pooling m
    actual generated samples."""
    lam, source = inp.resolve()
    out = R.augmentation_report(lam, source, inp.q, n, m, inp.seed)
    if inp.emit(out):
        return
    table = _table(f"Theorem 8: augmentation with a generator  ({escape(source)}, q={inp.q}, n={n}, m={m})",
                   ("i", "lambda (true)", "lambda_hat (n real)", "lambda^da (Thm 8)", "scipy optimum", "pooled m generated"))
    for i in range(lam.size):
        table.add_row(str(i + 1), *(_f(out[k][i]) for k in ("eigenvalues", "sample_eigenvalues", "augmented", "numerical",
                                                            "generated_samples")))
    console.out.print(table)
    te = out["tail_rel_error_vs_truth"]
    console.out.print(f"scipy optimum vs Thm 8: max relative error {out['max_rel_error_numerical']:.2e}; "
                      f"tail (i > q) relative error to the truth: {te['sample']:.3f} from the real samples alone, "
                      f"{te['augmented']:.3f} after augmentation")


@command(q=3)
def simulate(
    inp: Inputs, L: LOpt = 4.0, L_orig: LOrig = 4.0, strategy: StrategyOpt = 1,
    samples: Annotated[int, typer.Option("--samples", min=10, help="Training samples from N(mu*, Sigma*).")] = 100_000,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Maximum outer steps.")] = 2000,
    lr: Annotated[float, typer.Option("--lr", help="Step size on the log-eigenvalues.")] = 0.5,
    inner: Annotated[Inner, typer.Option("--inner", help="Inner maximisation: exact (solved each step) or ascent (gradient ascent, warm-started).")] = Inner.exact,
    inner_steps: Annotated[int, typer.Option("--inner-steps", min=1, help="Gradient-ascent steps per outer step with --inner ascent.")] = 5,
    n_fit: Annotated[Optional[int], typer.Option("--n-fit", min=2, help="Fit the generator to this many real samples (Theorem 9, strategy 3).")] = None,
) -> None:
    """Adversarial training by gradient descent-ascent on samples; lands on Theorems 6 and 5.

    The model (mu, Sigma in the data's eigenbasis) is trained on samples of N(mu*, Sigma*)
    against the optimal original-space and latent-space perturbations, recomputed at every
    step; the learned eigenvalues are compared with Theorems 6 and 5 (and 9 with --n-fit)."""
    R.check_multipliers(L, L_orig)
    if not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr must be > 0, got {lr}")
    lam, source = inp.resolve(default=SIMULATE_EIGENVALUES)
    res = R.simulate_report(lam, source, inp.q, L, L_orig, strategy, samples=samples, steps=steps, lr=lr,
                            inner=inner, inner_steps=inner_steps, n_fit=n_fit, seed=inp.seed)
    if inp.emit(res):
        return
    o, la = res["original"], res["latent"]
    cols = ["i", "lambda", "original: learned", "Thm 6", "rel err", "latent: learned", "Thm 5", "rel err"]
    table = _table(f"learned eigenvalues  ({escape(source)}, q={inp.q}, L={L:g}, L'={L_orig:g}, strategy {strategy}, "
                   f"{samples} samples)", cols + (["Thm 9", "rel err"] if n_fit is not None else []))
    _eigen_rows(table, lam.size, lambda i: [
        _f(lam[i]), _f(o["learned"][i]), _f(o["theorem6"][i]), f"{o['rel_error'][i]:.2%}", _f(la["learned"][i]),
        _f(la["theorem5"][i]), f"{la['rel_error'][i]:.2%}",
        *([_f(la["theorem9"][i]), f"{la['rel_error_theorem9'][i]:.2%}"] if n_fit is not None else [])])
    console.out.print(table)
    console.out.print(
        f"max relative error: original {res['max_rel_error']['original']:.2%} (Thm 6), latent "
        f"{res['max_rel_error']['latent']:.2%} (Thm 5); against the theorems at the sample's own moments: "
        f"{np.max(o['rel_error_at_sample']):.1e}, {np.max(la['rel_error_at_sample']):.1e} (optimisation error); "
        f"steps {o['steps']}, {la['steps']}; wall {res['wall_s']:.1f} s")
    if n_fit is not None:
        console.out.print(f"generator fitted to {n_fit} real samples: latent vs Thm 9 "
                          f"{np.max(la['rel_error_theorem9']):.2%}, vs the population's Thm 5 "
                          f"{np.max(la['rel_error']):.2%}")


@command()
def verify(inp: Inputs, L: LOpt = 4.0, L_orig: LOrig = 4.0,
           samples: Annotated[int, typer.Option("--samples", min=1000, help="Monte Carlo samples per check.")] = 200_000,
           ) -> None:
    """Run every check on a few spectra; pass/fail with the errors, exit 1 on any failure.

    Monte Carlo, scipy brute force (random non-diagonal matrices), fixed points, nested min-max,
    gradient descent-ascent; your spectrum is added to the cases when given. A check with
    nothing to compare (say, an infinite closed form) is shown n/a: neither a pass nor a failure."""
    R.check_multipliers(L, L_orig)
    cases = T.default_cases(inp.seed)
    if inp.eigenvalues is not None or inp.spectrum is not None:
        cases.append(R.verify_case(*inp.resolve(), inp.q, L, L_orig))
    with console.progress() as bar:
        task = bar.add_task("verify", total=None, status="")
        out = R.verify_report(cases, samples, inp.seed,
                              progress=lambda check, case, ok: bar.update(task, advance=1, status=f"{check} [{case}]"))
    if not inp.emit(out):
        table = _table("theory verify", ("check", "case", "error", "tolerance", "", "note"),
                       left=("check", "case", "", "note"))
        for r in out["checks"]:
            kind, measured = r["kind"], r["kind"] != "bool" and r["passed"] is not None
            err = "-" if not measured else (f"|z| {_f(r['error'], 3)}" if kind.startswith("z") else f"{r['error']:.2e}")
            tol = "-" if kind == "bool" else f"{'>' if kind == 'z>' else '<='} {_f(r['tolerance'], 3)}"
            status = {True: "[green]pass[/green]", False: "[bold red]FAIL[/bold red]", None: "n/a"}[r["passed"]]
            table.add_row(escape(r["check"]), escape(r["case"]), err, tol, status, escape(r["note"]))
        console.out.print(table)
        rows = out["checks"]
        console.out.print(f"{sum(r['passed'] is True for r in rows)}/{len(rows)} checks passed, "
                          f"{sum(r['passed'] is None for r in rows)} not applicable, {out['n_failed']} failed, "
                          f"in {out['wall_s']:.1f} s")
    if out["n_failed"]:
        raise typer.Exit(1)


@command()
def plot(
    inp: Inputs,
    file: Annotated[Path, typer.Argument(help="Output image (.png, .pdf or .svg).", dir_okay=False)],
    L: LOpt = 4.0, L_orig: LOrig = 4.0, strategy: StrategyOpt = 1,
    L_min: Annotated[float, typer.Option("--L-min", help="Smallest L for the excess-risk panel; > 1.")] = 1.5,
    L_max: Annotated[float, typer.Option("--L-max", help="Largest L for the excess-risk panel.")] = 1000.0,
) -> None:
    """Plot amplification against eigen-index and excess risk against L.

    Left: lambda^ls/lambda (Thm 5) and lambda^r/lambda (Thm 6). Right: Corollary 3, Theorem 2's
    perturbation part and Theorem 4 against L, with slope -1 and -2 guides."""
    R.check_multipliers(L, L_orig)
    outputs.check_figure(file, "plot")
    R.check_L_range(L_min, L_max)
    lam, source = inp.resolve()
    fig, ratio_ls, ratio_r = T.theory_figure(lam, q=inp.q, L=L, L_orig=L_orig, strategy=strategy, L_min=L_min,
                                             L_max=L_max, source=source)
    T.save_figure(fig, file)
    if not inp.emit({"path": str(file), "spectrum": describe(lam, inp.q, source), "L": L, "L_orig": L_orig,
                     "strategy": strategy, "latent_ratio": ratio_ls, "original_ratio": ratio_r}):
        console.out.print(f"wrote {file}")
