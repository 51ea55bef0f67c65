"""Evaluation: accuracy under an attack (`accuracy`), the gradient-masking audit (`audit`), and
class covariance spectra (`spectrum`)."""

from .accuracy import attack_accuracy, batch_generator, clean_accuracy, make_generator  # noqa: F401
