"""Training: the modes (`modes`), one run's resolved settings (`config`), one loop for every
mode (`loop`), what a step minimises (`objectives`)."""

from .config import TrainConfig, check_out, cvae_config, default_cvae_path, mismatched, resolve_config  # noqa: F401
from .loop import all_finite, ensure_trained, epoch_seed, train, train_epoch, with_basis, with_cvae  # noqa: F401
from .modes import CVAE, MODES, STRATEGIES, ModeKind, mode  # noqa: F401
from .objectives import ClassifierObjective, CVAEObjective, Elbo, cvae_test_metrics  # noqa: F401
