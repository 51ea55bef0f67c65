"""The theory figure: amplification against eigen-index (Theorems 5 and 6) and excess risk
against the Lagrange multiplier (Corollary 3, Theorems 2 and 4)."""

from __future__ import annotations

import numpy as np

from ..runtime import outputs
from .closed_form import as_spectrum, ppca
from .excess_risk import corollary3, latent_excess_perturbation, original_excess_risk
from .saddle import amplification, latent_saddle, original_saddle, rank_q_latent_ratio


def theory_figure(lam=None, *, q: int = 2, L: float = 4.0, L_orig: float = 4.0, strategy: int = 1,
                  L_min: float = 1.5, L_max: float = 1000.0, source: str | None = None):
    """Build the figure; returns (figure, latent_ratio, original_ratio)."""
    lam = as_spectrum([4.0, 2.0, 1.0, 0.5] if lam is None else lam)
    source = source or "eigenvalues " + ",".join(f"{v:g}" for v in lam[:8]) + ("..." if lam.size > 8 else "")
    ppca(lam, q)
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

    idx = np.arange(1, lam.size + 1)
    ls = latent_saddle(lam, q, L, strategy)
    r = original_saddle(lam, L_orig)
    ratio_ls, ratio_r = amplification(ls, lam), amplification(r, lam)
    Ls = np.geomspace(L_min, L_max, 200)
    c3 = corollary3(q, Ls)
    pert = latent_excess_perturbation(lam, q, Ls, strategy)
    th4 = original_excess_risk(lam, Ls)

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    marker = "o" if lam.size <= 40 else None
    rank_q_ratio = np.where(idx <= q, float(rank_q_latent_ratio(L)), np.nan)

    def positive(y):  # zeros (strategy 1, i > q) cannot sit on a log axis
        return np.where(np.isfinite(y) & (y > 0), y, np.nan)

    ax1.plot(idx, positive(ratio_r), marker=marker, ms=4, color="tab:red",
             label=f"original space $\\lambda^r/\\lambda$ (Thm 6, L'={L_orig:g})")
    ax1.plot(idx, positive(ratio_ls), marker=marker, ms=4, color="tab:blue",
             label=f"latent space $\\lambda^{{ls}}/\\lambda$ (Thm 5, L={L:g}, strategy {strategy})")
    ax1.plot(idx, rank_q_ratio, color="tab:blue", ls="--", lw=1.2, alpha=0.7,
             label="latent space, rank-q data: 1/2 + 1/L + sqrt(1/4 + 1/L)")
    ax1.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ax1.axvline(q + 0.5, color="0.4", lw=0.8, ls="--", alpha=0.6)
    ax1.text(q + 0.5, 0.02, f" q={q}", color="0.3", va="bottom", fontsize=8, transform=ax1.get_xaxis_transform())
    ax1.set_yscale("log")
    ax1.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax1.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax1.yaxis.set_minor_formatter(NullFormatter())
    if lam.size > 40:
        ax1.set_xscale("log")
    else:
        ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("eigen-index i (decreasing variance)")
    ax1.set_ylabel("trained / true eigenvalue")
    zeros = bool(np.any(ratio_ls[np.isfinite(ratio_ls)] == 0))
    ax1.set_title("amplification: original-space training boosts the small-variance directions,\n"
                  "latent training the top q" + ("  (lambda^ls = 0 beyond q: not drawn)" if zeros else ""), fontsize=10)
    ax1.legend(fontsize=8, loc="best")
    ax1.grid(True, which="both", alpha=0.25)

    ax2.loglog(Ls, c3, color="tab:blue", lw=2, label=f"Cor 3 (rank q={q}): q(2L-1)/(2(L-1)$^2$)")
    if np.all(np.isfinite(pert)) and np.all(pert > 0):
        ax2.loglog(Ls, pert, color="tab:cyan", ls="--", label="Thm 2 perturbation part (this spectrum)")
    if np.any(np.isfinite(th4)):
        ax2.loglog(Ls, np.where(np.isfinite(th4), th4, np.nan), color="tab:red", lw=2, label="Thm 4 (L' = L)")
    anchor = float(c3[-1])
    ax2.loglog(Ls, anchor * (Ls / Ls[-1]) ** -1.0, color="0.3", ls=":", lw=1, label="slope -1")
    ax2.loglog(Ls, anchor * (Ls / Ls[-1]) ** -2.0, color="0.6", ls="-.", lw=1, label="slope -2 (the paper's claim)")
    finite4 = th4[np.isfinite(th4)]
    top = max(float(np.nanmax(c3)), float(finite4.max()) if finite4.size else 0.0)
    bottom = min(float(np.nanmin(c3)), float(finite4.min()) if finite4.size else np.inf)
    ax2.set_ylim(bottom / 3.0, top * 3.0)
    ax2.set_xlabel("Lagrange multiplier L (larger = smaller budget)")
    ax2.set_ylabel("excess risk at $\\Theta^*$")
    note = "" if finite4.size == Ls.size else "  (Thm 4 infinite where L' lam_min <= 1)"
    ax2.set_title(f"excess risk against L{note}", fontsize=10)
    ax2.legend(fontsize=8, loc="best")
    ax2.grid(True, which="both", alpha=0.25)
    fig.suptitle(f"Gaussian-mixture theory: {source}, d={lam.size}", fontsize=11)
    return fig, ratio_ls, ratio_r


def save_figure(fig, path) -> None:
    """Write atomically, in the format the suffix names, at the theory figure's resolution."""
    outputs.save_figure(fig, path, dpi=130, close=False)  # a bare Figure: nothing for pyplot to close
