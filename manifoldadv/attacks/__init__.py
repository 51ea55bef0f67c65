"""Attacks: the registry of attack kinds and specs (`registry`), the one projected-gradient loop
(`loop`), the gradient-free l1 attack (`pointwise`), AutoAttack (`external`) and training attacks
replayed as CUDA graphs (`graphed`)."""

from .registry import (ATTACKS, BUDGETS, EIGEN, KINDS, LATENT, NORM_OF, POINTWISE_RESTARTS, REGULAR, WORST, AttackKind,  # noqa: F401
                       AttackSpec, default_step_size, describe, eps_option, external_version, kind, make_spec, needs,
                       spec_for, with_overrides, worst_name, worst_spec)
from .loop import (cross_entropy, descend, frozen, latent_search, maximize, perturb, reconstruct,  # noqa: F401
                   start)
