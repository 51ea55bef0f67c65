"""The Gaussian-mixture theory of section 4 and appendices A and C (spec: THEORY.md): closed
forms, each recomputed by an independent numerical method, and the ``verify`` suite.

- ``closed_form``: spectra, P-PCA, Lemma 1's strategies, the optimal perturbations
- ``excess_risk``: Theorems 2 and 4, Corollary 3
- ``saddle``: Theorems 5, 6, 8 and 9
- ``gaussian``: the population, the P-PCA generator and the strategies sampled by definition,
  the Gaussian loss
- ``monte_carlo``: Monte Carlo estimates with standard errors and z-scores
- ``solvers``: inner maximisations by scipy, fixed points; ``min_max``: nested min-max and
  Theorem 8's objective over covariances
- ``gda``: adversarial training simulated by gradient descent-ascent
- ``checks``: ``verify``, the declarative list of checks
- ``spectra``: spectra from the command line's sources; ``reports``: the documents the
  ``theory`` commands print; ``plots``: the figure
"""

from .checks import Case, default_cases, verify
from .closed_form import (STRATEGIES, as_spectrum, latent_gain, latent_perturbation_matrix, original_gain,
                          original_perturbation_matrix, ppca, ppca_matrices, strategy_spectra, strategy_spectrum)
from .excess_risk import (corollary3, latent_excess_change, latent_excess_change_paper, latent_excess_perturbation,
                          latent_excess_risk, original_excess_bounds, original_excess_risk)
from .gda import simulate
from .plots import save_figure, theory_figure
from .saddle import (amplification, augmentation, finite_sample_saddle, latent_fixed_point_map, latent_saddle,
                     latent_saddle_general, original_fixed_point_map, original_saddle, original_saddle_matrix,
                     rank_q_latent_ratio)

__all__ = [
    "STRATEGIES", "as_spectrum", "ppca", "ppca_matrices", "strategy_spectrum", "strategy_spectra", "latent_gain",
    "original_gain", "latent_perturbation_matrix", "original_perturbation_matrix",
    "latent_excess_perturbation", "latent_excess_change", "latent_excess_change_paper", "latent_excess_risk",
    "corollary3", "original_excess_risk", "original_excess_bounds",
    "latent_saddle", "latent_saddle_general", "latent_fixed_point_map", "original_saddle", "original_fixed_point_map",
    "rank_q_latent_ratio", "original_saddle_matrix", "amplification", "augmentation", "finite_sample_saddle",
    "Case", "default_cases", "verify", "simulate", "theory_figure", "save_figure",
]
