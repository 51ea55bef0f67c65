"""manifoldadv: adversarial robustness along the directions of the data manifold."""

__version__ = "0.1.0"
