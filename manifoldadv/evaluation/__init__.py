"""Evaluation: accuracy under an attack (`accuracy`), the gradient-masking audit (`audit`), class
covariance spectra (`spectrum`) and each class's eigenspace (`eigenbasis`)."""

from .accuracy import attack_accuracy, batch_generator, clean_accuracy, make_generator  # noqa: F401
