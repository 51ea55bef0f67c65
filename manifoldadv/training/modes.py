"""The training modes: what each one trains, with which attacks, and how their losses combine.

The one place for every rule about a mode (as `attacks.KINDS` is for attacks): the CLI's choices,
the training loop, the study and the report ask the registry, never compare mode names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attacks import KINDS
from ..errors import UsageError

STRATEGIES = ("avg", "max")  # how a joint mode combines its attacks' losses (Tramer & Boneh 2019)


@dataclass(frozen=True)
class ModeKind:
    """name: the mode; attacks: the attacks that make its training examples (none: clean
    training); trains: "classifier", or "cvae" for the generator itself; joint: takes --strategy
    (the per-example losses of its attacks averaged or maxed); clean_weight: the default weight of
    the clean loss in adversarial epochs (NOTES.md: FGSM's label leaking); label: its name in
    tables."""

    name: str
    attacks: tuple[str, ...] = ()
    trains: str = "classifier"
    joint: bool = False
    clean_weight: float = 0.0
    label: str = ""

    @property
    def adversarial(self) -> bool:
        return bool(self.attacks)

    @property
    def needs_cvae(self) -> bool:
        """Its attacks include a latent (CVAE) attack."""
        return any(KINDS[a].space == "latent" for a in self.attacks)

    @property
    def needs_basis(self) -> bool:
        """Its attacks include an eigenspace attack (the class eigenbasis)."""
        return any(KINDS[a].subspace for a in self.attacks)

    @property
    def regular(self) -> bool:
        """Its attacks include a regular (unrestricted input-space) attack, whose eps ramps up
        (--eps-warmup)."""
        return any(KINDS[a].regular for a in self.attacks)

    @property
    def generator(self) -> bool:
        """Trains the CVAE rather than a classifier."""
        return self.trains == "cvae"

    def strategy(self, asked: str) -> str:
        """The strategy a run of this mode records: a single-attack mode has nothing to combine."""
        if asked not in STRATEGIES:
            raise UsageError(f"--strategy must be {' or '.join(STRATEGIES)}, got {asked!r}")
        return asked if self.joint else "avg"

    def checkpoint_name(self, data: str, strategy: str = "avg") -> str:
        suffix = "-max" if self.joint and strategy == "max" else ""
        from ..data.external import slug

        return f"{slug(data)}-{self.name}{suffix}.safetensors"

    def combine(self, losses: list[torch.Tensor], strategy: str) -> torch.Tensor:
        """Per-example loss from each attack's per-example losses."""
        stacked = torch.stack(losses)
        return stacked.max(0).values if strategy == "max" else stacked.mean(0)


MODES: dict[str, ModeKind] = {m.name: m for m in (
    ModeKind("std", label="Std training"),
    ModeKind("fgsm", ("fgsm",), clean_weight=0.5, label="FGSM-adv"),  # Goodfellow et al.'s alpha
    ModeKind("pgd", ("pgd",), label="PGD-adv"),
    ModeKind("l2", ("l2",), label="l2-adv"),
    ModeKind("l1", ("l1",), label="l1-adv"),
    ModeKind("joint-lp", ("l1", "pgd"), joint=True, label="joint (l1+linf)"),
    ModeKind("vae", ("vae",), label="VAE-adv"),
    ModeKind("joint", ("pgd", "vae"), joint=True, label="joint (PGD+VAE)"),
    ModeKind("eigen", ("eigen",), label="eigen-adv"),
    ModeKind("joint-eigen", ("pgd", "eigen"), joint=True, label="joint (PGD+eigen)"),
    ModeKind("cvae", trains="cvae", label="CVAE"),
)}
CVAE = "cvae"  # the generator's mode, trained first by everything that needs it


def mode(name: str) -> ModeKind:
    if name not in MODES:
        raise UsageError(f"unknown mode {name!r}; choose from {', '.join(MODES)}")
    return MODES[name]
