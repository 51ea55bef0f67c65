"""Evaluation: accuracy under an attack (`accuracy`), the gradient-masking audit (`audit`), class
covariance spectra (`spectrum`), each class's eigenspace (`eigenbasis`) and the robustness profile
on and off it (`profile`)."""

from .accuracy import attack_accuracy, batch_generator, clean_accuracy, make_generator  # noqa: F401
