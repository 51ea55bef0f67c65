"""`manifoldadv theory ...`: the Gaussian-mixture theory (section 4, appendices A and C; spec
THEORY.md) in closed form, each result beside an independent numerical computation."""

from __future__ import annotations

import math
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.markup import escape as _esc
from rich.table import Table

from .. import console, outputs
from .. import theory as T
from .. import theory_check as C
from ..errors import UsageError
from ..theory_plot import _ratio, save_figure, theory_figure
from ._app import app
from ._options import DataRoot, Device, DeviceOpt, Json, Quiet, Seed

theory_app = typer.Typer(
    name="theory",
    help="The Gaussian-mixture theory in closed form (P-PCA, Lemma 1, Theorems 2-9), each result "
    "checked numerically (Monte Carlo, scipy optimisation, fixed point, gradient descent-ascent).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(theory_app, name="theory")

PAPER_SLOPE = -2.0
ROTATE_MAX_D = 64  # Monte Carlo in a random rotation of the eigenbasis up to this d, in the eigenbasis above
DEFAULT_EIGENVALUES = "4,2,1,0.5"
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


# --------------------------------------------------------------------------- spectra


def _parse_eigenvalues(text: str) -> np.ndarray:
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise UsageError(f"--eigenvalues must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise UsageError("--eigenvalues is empty")
    return np.array(vals, dtype=np.float64)


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UsageError(f"--spectrum: no such file {path}")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise UsageError(f"--spectrum: {path} is not a .npy file (written by numpy.save)")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # malformed file: one line, no traceback
        raise UsageError(f"--spectrum: cannot read {path} as .npy ({exc})") from None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        return arr
    if arr.ndim == 2 and arr.shape[0] == arr.shape[1]:
        if not np.all(np.isfinite(arr)):
            raise UsageError(f"--spectrum: {path} has non-finite entries")
        asym = np.max(np.abs(arr - arr.T))
        if asym > 1e-8 * max(1.0, float(np.max(np.abs(arr)))):
            raise UsageError(f"--spectrum: {path} is a square matrix but not symmetric (a covariance is)")
        return np.linalg.eigvalsh(0.5 * (arr + arr.T))
    raise UsageError(f"--spectrum: {path} must hold a 1-D array of eigenvalues or a square covariance, got shape {arr.shape}")


def mnist_spectrum(k: int, data_root=None) -> np.ndarray:
    """Eigenvalues (float64) of the pixel covariance of class k of the real MNIST training set:
    the class's images go through the covariance op ``ClassCovariance`` (float64 state), then
    ``eigvalsh`` in float64. Only class k's rows are fed to the op (the other classes' covariances
    are not needed)."""
    import torch

    from ..data import load_dataset
    from ..ops import ClassCovariance

    ds = load_dataset("mnist", data_root)
    console.log(f"computing the covariance of MNIST class {k} (training set, {ds.dim} pixels) ...")
    idx = torch.nonzero(ds.train.y == k).flatten()
    if idx.numel() < 2:
        raise UsageError(f"mnist:{k}: class {k} has {idx.numel()} training images")
    acc = ClassCovariance(ds.num_classes, ds.dim)
    for start in range(0, idx.numel(), 4096):
        part = idx[start:start + 4096]
        acc.update(ds.train.images(part).reshape(len(part), -1).to(torch.float32), ds.train.y[part])
    counts, _, covs = acc.finalize()
    return np.linalg.eigvalsh(covs[k].to(torch.float64).numpy())


def resolve_spectrum(eigenvalues, spectrum, d, alpha, data_root=None, default: str = DEFAULT_EIGENVALUES):
    """(eigenvalues sorted decreasing, a description) from the command-line options."""
    if eigenvalues is not None and spectrum is not None:
        raise UsageError("give --eigenvalues or --spectrum, not both")
    if (d is not None or alpha is not None) and spectrum != "powerlaw":
        raise UsageError("--d and --alpha go with --spectrum powerlaw")
    if spectrum is None:
        text = default if eigenvalues is None else eigenvalues
        return T.as_spectrum(_parse_eigenvalues(text)), f"eigenvalues {text}"
    if spectrum == "powerlaw":
        d = 784 if d is None else d
        alpha = 1.0 if alpha is None else alpha
        if not math.isfinite(alpha):
            raise UsageError("--alpha must be finite")
        lam = np.arange(1, d + 1, dtype=np.float64) ** (-alpha)
        return T.as_spectrum(lam), f"powerlaw d={d} alpha={alpha:g}"
    if spectrum.startswith("mnist:"):
        label = spectrum.split(":", 1)[1]
        if not label.isdigit() or not 0 <= int(label) <= 9:
            raise UsageError(f"--spectrum mnist:K needs a class K in 0..9, got {spectrum!r}")
        return T.as_spectrum(mnist_spectrum(int(label), data_root)), f"MNIST train class {label}"
    if spectrum.endswith(".npy") or Path(spectrum).exists():
        return T.as_spectrum(_load_npy(Path(spectrum))), f"file {spectrum}"
    raise UsageError(f"--spectrum must be FILE.npy, 'powerlaw' or 'mnist:K', got {spectrum!r}")


def _describe(lam: np.ndarray, q: int, source: str) -> dict:
    sigma2, _ = T.ppca(lam, q)
    return {"source": source, "d": int(lam.size), "rank": int(np.sum(lam > 0)), "q": int(q), "sigma2": sigma2,
            "lambda_max": float(lam.max()), "lambda_min": float(lam.min())}


def _start(quiet: bool, device: Device) -> None:
    console.set_quiet(quiet)
    dev = getattr(device, "value", device)
    if dev == "cuda":
        console.log("theory runs on the CPU (float64 numpy); --device cuda is ignored")


def _check_mult(L: float, Lp: float | None = None) -> None:
    if not (math.isfinite(L) and L > 0):
        raise UsageError(f"--L must be finite and > 0, got {L}")
    if Lp is not None and not (math.isfinite(Lp) and Lp > 0):
        raise UsageError(f"--L-orig must be finite and > 0, got {Lp}")


def _auto_samples(samples: int | None, d: int) -> int:
    if samples is not None:
        return samples
    return 200_000 if d <= ROTATE_MAX_D else int(max(20_000, 2e9 // (d * 100)))


def _f(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}"


def _none_nan(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) or (np.ndim(x) == 0 and np.isnan(x)) else x


def _zero_small(x: float, scale: float) -> float:
    """Round-off (|x| <= 1e-12 scale) shown as 0."""
    return 0.0 if abs(float(x)) <= 1e-12 * scale else float(x)


def _shown(d: int, limit: int = 24) -> list[int | None]:
    """Row indices to print for d eigenvalues (first and last ones, None for an ellipsis)."""
    if d <= limit:
        return list(range(d))
    half = limit // 2
    return list(range(half)) + [None] + list(range(d - half, d))


# --------------------------------------------------------------------------- strategies


@theory_app.command()
def strategies(
    eigenvalues: Eigenvalues = None,
    spectrum: Spectrum = None,
    d: Dim = None,
    alpha: Alpha = None,
    data_root: DataRoot = None,
    q: Q = 2,
    samples: Samples = None,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Lemma 1: Lambda^(1..3) per eigenvalue, and whether (2) and (3) coincide.

    Beside the closed forms, the second moments of x' sampled by each strategy's definition
    (Monte Carlo, random rotation of the eigenbasis)."""
    _start(quiet, device)
    lam, source = resolve_spectrum(eigenvalues, spectrum, d, alpha, data_root)
    sp = T.strategy_spectra(lam, q)
    n = _auto_samples(samples, lam.size)
    diff23 = float(np.max(np.abs(sp[1] - sp[2])))
    rank_q = bool(np.all(lam[q:] == 0))
    mc = None
    if n:
        console.log(f"Monte Carlo: {n} samples per strategy")
        mc = {}
        for j in T.STRATEGIES:
            m = C.mc_strategy_moments(lam, q, j, n, seed=seed + j, rotate=lam.size <= ROTATE_MAX_D)
            diag = np.diagonal(m["second_moment"]) if m["second_moment"].ndim == 2 else m["second_moment"]
            se = np.diagonal(m["stderr"]) if m["stderr"].ndim == 2 else m["stderr"]
            entries = m["second_moment"].size
            mc[str(j)] = {"variance": diag, "stderr": se, "max_z": C.moments_zscore(m, sp[j - 1]),
                          "z_threshold": C.bonferroni_z(entries),
                          "entries": "full matrix" if m["second_moment"].ndim == 2 else "diagonal"}
        mc["n"] = n
    out = {
        "spectrum": _describe(lam, q, source),
        "eigenvalues": lam,
        "strategies": {str(j): sp[j - 1] for j in T.STRATEGIES},
        "coincide_2_3": diff23 <= 1e-12 * lam.max(),
        "max_abs_diff_2_3": diff23,
        "rank_q": rank_q,
        "all_equal_eigenvalues": bool(np.max(np.abs(sp - lam)) <= 1e-12 * lam.max()),
        "monte_carlo": mc,
    }
    if json_out:
        console.emit_json(out)
        return
    sigma2 = out["spectrum"]["sigma2"]
    table = Table(title=f"Lemma 1: x' ~ N(mu*, U diag(Lambda^(j)) U^T)  ({_esc(source)}, q={q}, sigma2={_f(sigma2)})")
    for col in ("i", "lambda_i", "Lambda(1)", "Lambda(2)", "Lambda(3)"):
        table.add_column(col, justify="right")
    if mc:
        for j in T.STRATEGIES:
            table.add_column(f"MC var ({j})", justify="right")
    for i in _shown(lam.size):
        if i is None:
            table.add_row("...", *[""] * (len(table.columns) - 1))
            continue
        row = [str(i + 1), _f(lam[i]), _f(sp[0, i]), _f(sp[1, i]), _f(sp[2, i])]
        if mc:
            row += [_f(_zero_small(mc[str(j)]["variance"][i], lam.max())) for j in T.STRATEGIES]
        table.add_row(*row)
    console.out.print(table)
    console.out.print(f"Lambda(2) == Lambda(3): {'yes' if out['coincide_2_3'] else 'NO'} "
                      f"(max |difference| {_f(diff23)}; the strategy-2 expression simplifies to lambda_i)")
    if rank_q:
        console.out.print(f"rank(Sigma*) <= q: sigma2 = 0 and all three equal Lambda*: "
                          f"{'yes' if out['all_equal_eigenvalues'] else 'NO'}")
    if mc:
        for j in T.STRATEGIES:
            r = mc[str(j)]
            console.out.print(f"Monte Carlo strategy {j}: max |z| {r['max_z']:.2f} over the {r['entries']} "
                              f"(threshold {r['z_threshold']:.2f}, n={n})")


# --------------------------------------------------------------------------- excess risk


def excess_risk_report(lam, q, L, Lp, strategy, n, seed) -> dict:
    pert = float(T.latent_excess_perturbation(lam, q, L, strategy))
    ch = T.latent_excess_change(lam, q, strategy)
    chp = T.latent_excess_change_paper(lam, q, strategy)
    latent = {
        "perturbation": pert,
        "change_of_distribution": ch,
        "change_of_distribution_paper": chp,
        "total": pert + ch,
        "total_paper": pert + chp,
        "corollary3_if_rank_q": float(T.corollary3(q, L)),
        "monte_carlo": None,
        "monte_carlo_parts": None,
    }
    val = float(T.original_excess_risk(lam, Lp))
    b = T.original_excess_bounds(lam, Lp)
    original = {"value": val, "lower_bound": float(b["lower_bound"]), "upper_bound": float(b["upper_bound"]),
                "paper_order_lower": float(b["paper_order_lower"]), "paper_order_upper": float(b["paper_order_upper"]),
                "monte_carlo": None}
    if n:
        rotate = lam.size <= ROTATE_MAX_D
        console.log(f"Monte Carlo: {n} samples" + ("" if rotate else " (in the eigenbasis: d is large)"))
        mc = C.mc_latent_excess(lam, q, L, strategy, n, seed=seed, rotate=rotate)
        latent["monte_carlo"] = mc["total"]
        latent["monte_carlo_parts"] = {k: mc[k] for k in ("perturbation", "change_of_distribution")}
        latent["z"] = {
            "total": C.zscore(pert + ch, mc["total"]),
            "perturbation": C.zscore(pert, mc["perturbation"]),
            "change_of_distribution": C.zscore(ch, mc["change_of_distribution"]),
            "change_of_distribution_paper": C.zscore(chp, mc["change_of_distribution"]),
        }
        original["monte_carlo"] = C.mc_original_excess(lam, Lp, n, seed=seed + 1, rotate=rotate)
        original["z"] = C.zscore(val, original["monte_carlo"])
    return {"latent": latent, "original": original}


@theory_app.command("excess-risk")
def excess_risk(
    eigenvalues: Eigenvalues = None,
    spectrum: Spectrum = None,
    d: Dim = None,
    alpha: Alpha = None,
    data_root: DataRoot = None,
    q: Q = 2,
    L: LOpt = 4.0,
    L_orig: LOrig = 4.0,
    strategy: StrategyOpt = 1,
    samples: Samples = None,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Theorems 2 and 4: excess risk of the optimal latent / original-space attack at Theta*.

    Both parts of Theorem 2 (the change-of-distribution part in the correct form and as the
    paper states it), Corollary 3's value, Theorem 4 with the paper's bounds, each beside a
    Monte Carlo estimate."""
    _start(quiet, device)
    _check_mult(L, L_orig)
    lam, source = resolve_spectrum(eigenvalues, spectrum, d, alpha, data_root)
    n = _auto_samples(samples, lam.size)
    rep = excess_risk_report(lam, q, L, L_orig, strategy, n, seed)
    out = {"spectrum": _describe(lam, q, source), "L": L, "L_orig": L_orig, "strategy": strategy, **rep}
    if json_out:
        console.emit_json(out)
        return
    lat, org = rep["latent"], rep["original"]
    table = Table(title=f"excess risk at Theta*  ({_esc(source)}, q={q}, L={L:g}, L'={L_orig:g}, strategy {strategy})")
    for col in ("quantity", "closed form", "Monte Carlo", "|z|"):
        table.add_column(col, justify="right" if col != "quantity" else "left")

    def mc_cell(m):
        return "-" if m is None else f"{_f(m['mean'])} ± {_f(m['stderr'], 2)}"

    parts = lat["monte_carlo_parts"] or {}
    z = lat.get("z", {})
    table.add_row("Thm 2 perturbation part", _f(lat["perturbation"]), mc_cell(parts.get("perturbation")),
                  _f(z.get("perturbation"), 3))
    table.add_row("Thm 2 change of distribution", _f(lat["change_of_distribution"]),
                  mc_cell(parts.get("change_of_distribution")), _f(z.get("change_of_distribution"), 3))
    table.add_row("  ... as the paper states it", _f(lat["change_of_distribution_paper"]), "",
                  _f(z.get("change_of_distribution_paper"), 3))
    table.add_row("Thm 2 total (latent space)", _f(lat["total"]), mc_cell(lat["monte_carlo"]), _f(z.get("total"), 3))
    table.add_row("Cor 3 value if rank(Sigma*) = q", _f(lat["corollary3_if_rank_q"]), "", "")
    table.add_row("Thm 4 (original space)", _f(org["value"]), mc_cell(org["monte_carlo"]), _f(org.get("z"), 3))
    table.add_row("  proof's bounds t/2 .. d t/2", f"{_f(org['lower_bound'])} .. {_f(org['upper_bound'])}", "", "")
    table.add_row("  paper's orders (L' lam_min)^-2 .. d(L' lam_min)^-2",
                  f"{_f(org['paper_order_lower'])} .. {_f(org['paper_order_upper'])}", "", "")
    console.out.print(table)
    if math.isinf(org["value"]):
        console.out.print("Thm 4 is infinite: L' lam_min <= 1 (lam_min = 0 means data on a manifold; "
                          "the original-space attack leaves it).")


# --------------------------------------------------------------------------- saddle point


@theory_app.command("saddle-point")
def saddle_point(
    eigenvalues: Eigenvalues = None,
    spectrum: Spectrum = None,
    d: Dim = None,
    alpha: Alpha = None,
    data_root: DataRoot = None,
    q: Q = 2,
    L: LOpt = 4.0,
    L_orig: LOrig = 4.0,
    strategy: StrategyOpt = 1,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Theorems 5 and 6: saddle points of latent-space and original-space adversarial training.

    The learned eigenvalues, their amplification lambda^ls/lambda and lambda^r/lambda, and the
    residual of the fixed-point equations solved numerically."""
    _start(quiet, device)
    _check_mult(L, L_orig)
    lam, source = resolve_spectrum(eigenvalues, spectrum, d, alpha, data_root)
    ls = T.latent_saddle(lam, q, L, strategy)
    r = T.original_saddle(lam, L_orig)
    fp = C.fixed_point_saddles(lam, q, L, L_orig, strategy)
    out = {
        "spectrum": _describe(lam, q, source),
        "L": L,
        "L_orig": L_orig,
        "strategy": strategy,
        "eigenvalues": lam,
        "latent": ls,
        "original": r,
        "latent_ratio": _ratio(ls, lam),
        "original_ratio": _ratio(r, lam),
        "fixed_point_residual": max(fp["latent_residual"], fp["original_residual"]),
        "fixed_point": {
            "latent": fp["latent"],
            "original": fp["original"],
            "latent_residual": fp["latent_residual"],
            "original_residual": fp["original_residual"],
            "latent_vs_closed_form": float(np.max(C._rel(fp["latent"], ls))),
            "original_vs_closed_form": float(np.max(C._rel(fp["original"], r))),
            "original_boundary_coordinates": fp["original_boundary"],
        },
        "rank_q_ratio": float(T.rank_q_latent_ratio(L)),
    }
    if json_out:
        console.emit_json(out)
        return
    table = Table(title=f"saddle points  ({_esc(source)}, q={q}, L={L:g}, L'={L_orig:g}, strategy {strategy})")
    for col in ("i", "lambda_i", "Lambda(j)_i", "lambda^ls (Thm 5)", "ls / lambda", "lambda^r (Thm 6)", "r / lambda"):
        table.add_column(col, justify="right")
    Lam = T.strategy_spectrum(lam, q, strategy)
    for i in _shown(lam.size):
        if i is None:
            table.add_row("...", *[""] * 6)
            continue
        table.add_row(str(i + 1), _f(lam[i]), _f(Lam[i]), _f(ls[i]), _f(_none_nan(out["latent_ratio"][i])), _f(r[i]),
                      _f(_none_nan(out["original_ratio"][i])))
    console.out.print(table)
    fpo = out["fixed_point"]
    console.out.print(f"fixed point solved numerically: residual {fpo['latent_residual']:.2e} (latent), "
                      f"{fpo['original_residual']:.2e} (original); vs closed form "
                      f"{fpo['latent_vs_closed_form']:.2e}, {fpo['original_vs_closed_form']:.2e}")
    console.out.print(f"for rank-q data lambda^ls/lambda = 1/2 + 1/L + sqrt(1/4 + 1/L) = {out['rank_q_ratio']:.4g} >= 1 "
                      "for i <= q: latent training amplifies the large-variance directions; lambda^r/lambda is "
                      "largest for the smallest lambda: original-space training amplifies the small-variance ones. "
                      "(ratios are undefined where lambda = 0)")


# --------------------------------------------------------------------------- rates


def fit_slope(L: np.ndarray, y: np.ndarray) -> float | None:
    """Least-squares slope of log y against log L (None unless all values are finite and > 0)."""
    y = np.asarray(y, dtype=np.float64)
    if y.size < 2 or not np.all(np.isfinite(y)) or np.any(y <= 0):
        return None
    return float(np.polyfit(np.log(L), np.log(y), 1)[0])


def rates_report(lam, q, strategy, Ls, n, seed) -> dict:
    lam_q = lam.copy()
    lam_q[q:] = 0.0
    c3 = T.corollary3(q, Ls)
    c3_thm2 = T.latent_excess_risk(lam_q, q, Ls, strategy)
    pert = T.latent_excess_perturbation(lam, q, Ls, strategy)
    th4 = T.original_excess_risk(lam, Ls)
    out = {
        "L": Ls,
        "q": q,
        "strategy": strategy,
        "corollary3": {"value": c3, "thm2_on_rank_q_spectrum": c3_thm2,
                       "max_rel_diff": float(np.max(np.abs(c3_thm2 - c3) / c3)),
                       "slope": fit_slope(Ls, c3), "tail_slope": fit_slope(Ls[-2:], c3[-2:])},
        "theorem4": {"value": th4, "slope": fit_slope(Ls, th4), "tail_slope": fit_slope(Ls[-2:], th4[-2:]),
                     "L_orig": "equal to L"},
        "latent_perturbation": {"value": pert, "slope": fit_slope(Ls, pert)},
        "expected_slope": -1.0,
        "paper_claim": {"corollary3": PAPER_SLOPE, "theorem4": PAPER_SLOPE,
                        "text": "the paper states O(q L^-2) (Corollary 3) and O(d (lam_min L')^-2) (Theorem 4)"},
    }
    if n:
        rotate = lam.size <= ROTATE_MAX_D
        console.log(f"Monte Carlo: {n} samples at each of {Ls.size} values of L")
        mc3, mc4 = [], []
        with console.progress() as bar:
            task = bar.add_task("rates", total=Ls.size, status="")
            for i, Lv in enumerate(Ls):
                mc3.append(C.mc_latent_excess(lam_q, q, float(Lv), strategy, n, seed=seed + i, rotate=rotate)["total"])
                if np.isfinite(th4[i]):
                    mc4.append(C.mc_original_excess(lam, float(Lv), n, seed=seed + 1000 + i, rotate=rotate))
                else:
                    mc4.append(None)
                bar.advance(task)
        out["corollary3"]["monte_carlo"] = mc3
        out["corollary3"]["slope_monte_carlo"] = fit_slope(Ls, [m["mean"] for m in mc3])
        out["corollary3"]["max_z"] = max(C.zscore(float(v), m) for v, m in zip(c3, mc3))
        out["theorem4"]["monte_carlo"] = mc4
        if all(m is not None for m in mc4):
            out["theorem4"]["slope_monte_carlo"] = fit_slope(Ls, [m["mean"] for m in mc4])
            out["theorem4"]["max_z"] = max(C.zscore(float(v), m) for v, m in zip(th4, mc4))
        else:
            out["theorem4"]["slope_monte_carlo"] = None
    return out


@theory_app.command()
def rates(
    eigenvalues: Eigenvalues = None,
    spectrum: Spectrum = None,
    d: Dim = None,
    alpha: Alpha = None,
    data_root: DataRoot = None,
    q: Q = 2,
    strategy: StrategyOpt = 1,
    L_min: Annotated[float, typer.Option("--L-min", help="Smallest L (and L'); > 1.")] = 10.0,
    L_max: Annotated[float, typer.Option("--L-max", help="Largest L (and L').")] = 10000.0,
    points: Annotated[int, typer.Option("--points", min=3, help="Values of L, log-spaced.")] = 13,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Monte Carlo samples per L (0: none).")] = 20000,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Excess risk against L with fitted log-log slopes (-1; the paper says -2).

    Corollary 3 (on the rank-q truncation of the spectrum) and Theorem 4 (L' = L), exact and
    by Monte Carlo at each L."""
    _start(quiet, device)
    if not (math.isfinite(L_min) and math.isfinite(L_max) and 1.0 < L_min < L_max):
        raise UsageError(f"need 1 < --L-min < --L-max, got {L_min}, {L_max}")
    lam, source = resolve_spectrum(eigenvalues, spectrum, d, alpha, data_root)
    T.ppca(lam, q)
    Ls = np.geomspace(L_min, L_max, points)
    rep = rates_report(lam, q, strategy, Ls, samples, seed)
    out = {"spectrum": _describe(lam, q, source), **rep}
    if json_out:
        console.emit_json(out)
        return
    c3, th4 = rep["corollary3"], rep["theorem4"]
    table = Table(title=f"excess risk against L  ({_esc(source)}, q={q}, strategy {strategy})")
    cols = ["L", "Cor 3 exact", "Cor 3 MC", "Thm 2 pert. part", "Thm 4 exact (L'=L)", "Thm 4 MC"]
    for col in cols:
        table.add_column(col, justify="right")
    for i, Lv in enumerate(Ls):
        m3 = c3.get("monte_carlo", [None] * Ls.size)[i]
        m4 = th4.get("monte_carlo", [None] * Ls.size)[i]
        table.add_row(_f(Lv), _f(c3["value"][i]), "-" if m3 is None else f"{_f(m3['mean'])} ± {_f(m3['stderr'], 2)}",
                      _f(rep["latent_perturbation"]["value"][i]), _f(th4["value"][i]),
                      "-" if m4 is None else f"{_f(m4['mean'])} ± {_f(m4['stderr'], 2)}")
    console.out.print(table)
    slope = Table(title="fitted log-log slopes (expected -1; the paper claims -2)")
    for col in ("result", "exact", "Monte Carlo", "last interval", "paper"):
        slope.add_column(col, justify="right" if col != "result" else "left")
    slope.add_row("Cor 3: q(2L-1)/(2(L-1)^2)", _f(c3["slope"]), _f(c3.get("slope_monte_carlo")), _f(c3["tail_slope"]),
                  "O(q L^-2): -2")
    slope.add_row("Thm 4: 1/2 sum (2L'l-1)/(L'l-1)^2", _f(th4["slope"]), _f(th4.get("slope_monte_carlo")),
                  _f(th4["tail_slope"]), "O(d (lam_min L')^-2): -2")
    slope.add_row("Thm 2 perturbation part", _f(rep["latent_perturbation"]["slope"]), "", "", "")
    console.out.print(slope)
    console.out.print(f"Cor 3 = Thm 2 on the rank-q spectrum: max relative difference {c3['max_rel_diff']:.2e}")
    if th4["slope"] is None:
        console.out.print("Thm 4 is infinite over this range (L' lam_min <= 1): no slope")


# --------------------------------------------------------------------------- augmentation


@theory_app.command()
def augmentation(
    n: Annotated[int, typer.Option("--n", min=2, help="Real samples.")] = 100,
    m: Annotated[int, typer.Option("--m", min=0, help="Generated samples (from the P-PCA fitted to the n real ones).")] = 1000,
    eigenvalues: Eigenvalues = None,
    spectrum: Spectrum = None,
    d: Dim = None,
    alpha: Alpha = None,
    data_root: DataRoot = None,
    q: Q = 2,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Theorem 8: augmenting n real samples with m generated ones.

    The top q eigenvalues stay, the others are pulled towards their mean (the generator does
    not help). Checked by minimising the mixed objective with scipy (d <= 16) and by pooling m
    actual generated samples."""
    _start(quiet, device)
    lam, source = resolve_spectrum(eigenvalues, spectrum, d, alpha, data_root)
    T.ppca(lam, q)
    if lam.size > 16:
        raise UsageError(f"augmentation optimises a full d x d covariance with scipy: d <= 16, got {lam.size}")
    chk = C.augmentation_check(lam, q, n, m, seed=seed)
    lam_hat = T.as_spectrum(chk["sample_eigenvalues"])
    da = T.augmentation(lam_hat, q, n, m)
    tail = slice(q, lam.size)
    out = {
        "spectrum": _describe(lam, q, source),
        "n": n,
        "m": m,
        "eigenvalues": lam,
        "sample_eigenvalues": lam_hat,
        "augmented": da,
        "numerical": chk["numerical"],
        "max_rel_error_numerical": float(np.max(np.abs(chk["numerical"] - da) / da)),
        "mean_error_numerical": chk["mean_error"],
        "generated_samples": chk["generated_samples"],
        "tail_rel_error_vs_truth": {
            "sample": float(np.mean(np.abs(lam_hat[tail] - lam[tail]) / lam[tail])) if q < lam.size else 0.0,
            "augmented": float(np.mean(np.abs(da[tail] - lam[tail]) / lam[tail])) if q < lam.size else 0.0,
        },
    }
    if json_out:
        console.emit_json(out)
        return
    table = Table(title=f"Theorem 8: augmentation with a generator  ({_esc(source)}, q={q}, n={n}, m={m})")
    for col in ("i", "lambda (true)", "lambda_hat (n real)", "lambda^da (Thm 8)", "scipy optimum", "pooled m generated"):
        table.add_column(col, justify="right")
    for i in range(lam.size):
        table.add_row(str(i + 1), _f(lam[i]), _f(lam_hat[i]), _f(da[i]), _f(chk["numerical"][i]),
                      _f(chk["generated_samples"][i]))
    console.out.print(table)
    te = out["tail_rel_error_vs_truth"]
    console.out.print(f"scipy optimum vs Thm 8: max relative error {out['max_rel_error_numerical']:.2e}; "
                      f"tail (i > q) relative error to the truth: {te['sample']:.3f} from the real samples alone, "
                      f"{te['augmented']:.3f} after augmentation")


# --------------------------------------------------------------------------- simulate


@theory_app.command()
def simulate(
    eigenvalues: Eigenvalues = None,
    spectrum: Spectrum = None,
    d: Dim = None,
    alpha: Alpha = None,
    data_root: DataRoot = None,
    q: Q = 3,
    L: LOpt = 4.0,
    L_orig: LOrig = 4.0,
    strategy: StrategyOpt = 1,
    samples: Annotated[int, typer.Option("--samples", min=10, help="Training samples from N(mu*, Sigma*).")] = 100_000,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Maximum outer steps.")] = 2000,
    lr: Annotated[float, typer.Option("--lr", help="Step size on the log-eigenvalues.")] = 0.5,
    inner: Annotated[Inner, typer.Option("--inner", help="Inner maximisation: exact (solved each step) or ascent (gradient ascent, warm-started).")] = Inner.exact,
    inner_steps: Annotated[int, typer.Option("--inner-steps", min=1, help="Gradient-ascent steps per outer step with --inner ascent.")] = 5,
    n_fit: Annotated[Optional[int], typer.Option("--n-fit", min=2, help="Fit the generator to this many real samples (Theorem 9, strategy 3).")] = None,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Adversarial training by gradient descent-ascent on samples; lands on Theorems 6 and 5.

    The model (mu, Sigma in the data's eigenbasis) is trained on samples of N(mu*, Sigma*)
    against the optimal original-space and latent-space perturbations, recomputed at every
    step; the learned eigenvalues are compared with Theorems 6 and 5 (and 9 with --n-fit)."""
    _start(quiet, device)
    _check_mult(L, L_orig)
    if not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr must be > 0, got {lr}")
    lam, source = resolve_spectrum(eigenvalues, spectrum, d, alpha, data_root, default=SIMULATE_EIGENVALUES)
    if lam.size > 128:
        raise UsageError(f"simulate keeps samples x d arrays in memory: d <= 128, got {lam.size}")
    T.ppca(lam, q)
    if n_fit is not None and strategy != 3:
        raise UsageError("--n-fit (Theorem 9) is stated for strategy 3; use --strategy 3")
    console.log(f"gradient descent-ascent: {samples} samples, d={lam.size}, q={q}, inner {inner.value}")
    t0 = time.perf_counter()
    res = C.simulate(lam, q, L, L_orig, strategy, samples=samples, steps=steps, lr=lr, inner=inner.value,
                     inner_steps=inner_steps, n_fit=n_fit, seed=seed)
    res["wall_s"] = time.perf_counter() - t0
    res["spectrum"] = _describe(lam, q, source)
    o, la = res["original"], res["latent"]
    res["max_rel_error"] = {"original": float(np.max(o["rel_error"])), "latent": float(np.max(la["rel_error"]))}
    if json_out:
        console.emit_json(res)
        return
    table = Table(title=f"learned eigenvalues  ({_esc(source)}, q={q}, L={L:g}, L'={L_orig:g}, strategy {strategy}, "
                        f"{samples} samples)")
    cols = ["i", "lambda", "original: learned", "Thm 6", "rel err", "latent: learned", "Thm 5", "rel err"]
    if n_fit is not None:
        cols += ["Thm 9", "rel err"]
    for col in cols:
        table.add_column(col, justify="right")
    for i in _shown(lam.size):
        if i is None:
            table.add_row("...", *[""] * (len(cols) - 1))
            continue
        row = [str(i + 1), _f(lam[i]), _f(o["learned"][i]), _f(o["theorem6"][i]), f"{o['rel_error'][i]:.2%}",
               _f(la["learned"][i]), _f(la["theorem5"][i]), f"{la['rel_error'][i]:.2%}"]
        if n_fit is not None:
            row += [_f(la["theorem9"][i]), f"{la['rel_error_theorem9'][i]:.2%}"]
        table.add_row(*row)
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


# --------------------------------------------------------------------------- verify


@theory_app.command()
def verify(
    eigenvalues: Eigenvalues = None,
    spectrum: Spectrum = None,
    d: Dim = None,
    alpha: Alpha = None,
    data_root: DataRoot = None,
    q: Q = 2,
    L: LOpt = 4.0,
    L_orig: LOrig = 4.0,
    samples: Annotated[int, typer.Option("--samples", min=1000, help="Monte Carlo samples per check.")] = 200_000,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Run every check on a few spectra; pass/fail with the errors, exit 1 on any failure.

    Monte Carlo, scipy brute force (random non-diagonal matrices), fixed points, nested min-max,
    gradient descent-ascent; your spectrum is added to the cases when given."""
    _start(quiet, device)
    _check_mult(L, L_orig)
    cases = C.default_cases(seed)
    if eigenvalues is not None or spectrum is not None:
        lam, source = resolve_spectrum(eigenvalues, spectrum, d, alpha, data_root)
        T.ppca(lam, q)
        if lam.size > 256:
            raise UsageError(f"verify's Monte Carlo works with d <= 256, got {lam.size}")
        cases.append(C.Case(source, lam, q, L, L_orig))
    t0 = time.perf_counter()
    with console.progress() as bar:
        task = bar.add_task("verify", total=None, status="")

        def tick(check, case, ok):
            bar.update(task, advance=1, status=f"{check} [{case}]")

        rows = C.verify(cases, samples=samples, seed=seed, progress=tick)
    wall = time.perf_counter() - t0
    failed = [r for r in rows if not r["passed"]]
    if json_out:
        console.emit_json({"checks": rows, "passed": not failed, "n_checks": len(rows), "n_failed": len(failed),
                           "wall_s": wall})
    else:
        table = Table(title="theory verify")
        for col in ("check", "case", "error", "tolerance", "", "note"):
            table.add_column(col, justify="right" if col in ("error", "tolerance") else "left")
        for r in rows:
            kind = r["kind"]
            err = "-" if kind == "bool" else (f"|z| {_f(r['error'], 3)}" if kind.startswith("z") else f"{r['error']:.2e}")
            tol = "-" if kind == "bool" else (f"{'>' if kind == 'z>' else '<='} {_f(r['tolerance'], 3)}")
            status = "[green]pass[/green]" if r["passed"] else "[bold red]FAIL[/bold red]"
            table.add_row(_esc(r["check"]), _esc(r["case"]), err, tol, status, _esc(r["note"]))
        console.out.print(table)
        console.out.print(f"{len(rows) - len(failed)}/{len(rows)} checks passed in {wall:.1f} s")
    if failed:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- plot


@theory_app.command()
def plot(
    file: Annotated[Path, typer.Argument(help="Output image (.png, .pdf or .svg).", dir_okay=False)],
    eigenvalues: Eigenvalues = None,
    spectrum: Spectrum = None,
    d: Dim = None,
    alpha: Alpha = None,
    data_root: DataRoot = None,
    q: Q = 2,
    L: LOpt = 4.0,
    L_orig: LOrig = 4.0,
    strategy: StrategyOpt = 1,
    L_min: Annotated[float, typer.Option("--L-min", help="Smallest L for the excess-risk panel; > 1.")] = 1.5,
    L_max: Annotated[float, typer.Option("--L-max", help="Largest L for the excess-risk panel.")] = 1000.0,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Plot amplification against eigen-index and excess risk against L.

    Left: lambda^ls/lambda (Thm 5) and lambda^r/lambda (Thm 6). Right: Corollary 3, Theorem 2's
    perturbation part and Theorem 4 against L, with slope -1 and -2 guides."""
    _start(quiet, device)
    _check_mult(L, L_orig)
    suffix = file.suffix.lower()
    if suffix not in (".png", ".pdf", ".svg"):
        raise UsageError(f"plot writes .png, .pdf or .svg, got {file.name!r}")
    outputs.check_file(file, "plot")
    if not (math.isfinite(L_min) and math.isfinite(L_max) and 1.0 < L_min < L_max):
        raise UsageError(f"need 1 < --L-min < --L-max, got {L_min}, {L_max}")
    lam, source = resolve_spectrum(eigenvalues, spectrum, d, alpha, data_root)
    T.ppca(lam, q)
    fig, ratio_ls, ratio_r = theory_figure(lam, q=q, L=L, L_orig=L_orig, strategy=strategy, L_min=L_min,
                                           L_max=L_max, source=source)
    save_figure(fig, file)
    out = {"path": str(file), "spectrum": _describe(lam, q, source), "L": L, "L_orig": L_orig, "strategy": strategy,
           "latent_ratio": ratio_ls, "original_ratio": ratio_r}
    if json_out:
        console.emit_json(out)
    else:
        console.out.print(f"wrote {file}")
