"""Training: one loop for every mode (`loop`), what a step minimises (`objectives`)."""

from .loop import (DEFAULT_CLEAN_WEIGHT, MODES, STRATEGIES, TrainConfig, all_finite, check_out,  # noqa: F401
                   default_out, ensure_trained, epoch_seed, mismatched, needs_cvae, resolve_config, train,
                   train_epoch)
from .objectives import ClassifierObjective, CVAEObjective, Elbo, cvae_test_metrics  # noqa: F401
