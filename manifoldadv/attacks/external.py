"""Attacks from their authors' package: AutoAttack (Croce & Hein 2020) through `pyautoattack`
(MIT; the code of fra31/auto-attack), an optional dependency (`pip install 'manifoldadv[eval]'`).

The settings are the authors' fixed ones ("standard": APGD-CE, APGD-T, FAB-T and Square, 100
iterations, 5000 queries; l1 with their l1 changes); only eps and the norm come from the budget.
The model goes in as it is: images in [0, 1], normalisation inside it, in eval mode (the caller's
`frozen`). Their attacks reseed torch's global generators, so they run inside `fork_rng`.
"""

from __future__ import annotations

import logging

import torch

from ..errors import UsageError

EXTRA = "pip install 'manifoldadv[eval]'"
AA_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}
MIN_CLASSES_DLR = 4  # AutoAttack's with fewer classes: the standard version without apgd-t
# attack name -> what runs: None is the standard version's four attacks, each on what the ones
# before it left robust; otherwise that one attack with the standard version's settings
RUNS = {"autoattack": None, "autoattack-l2": None, "autoattack-l1": None,
        "apgd-ce": ["apgd-ce"], "apgd-t": ["apgd-t"], "square": ["square"]}


def _autoattack_class():
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise UsageError(f"the AutoAttack attacks need the package pyautoattack: {EXTRA}") from None
    log = logging.getLogger("auto-attack")  # its checks print through it; ours are `audit`'s
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False
    return AutoAttack


def available() -> bool:
    try:
        _autoattack_class()
    except UsageError:
        return False
    return True


def require() -> None:
    """A UsageError naming the extra when pyautoattack is missing."""
    _autoattack_class()


def run(model, x: torch.Tensor, y: torch.Tensor, name: str, norm: str, eps: float,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial images for (x, y) from AutoAttack attack `name` within the `norm` ball of
    radius eps and the [0, 1] box; examples it cannot fool come back unchanged."""
    AutoAttack = _autoattack_class()
    if len(x) == 0:
        return x.clone()
    # a seed per batch from the caller's generator: reproducible, and batches differ
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item()) \
        if generator is not None else 0
    devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] \
        if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        aa = AutoAttack(model, device=x.device, eps=float(eps), norm=AA_NORM[norm], seed=seed, version="standard")
        aa.verbose = False
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        # the targeted attacks take the standard version's number of most likely other classes (9, or
        # 5 for apgd-t in l1): with fewer classes, all of them
        for attack in (aa.apgd_targeted, aa.fab):
            attack.n_target_classes = min(attack.n_target_classes, classes - 1)
        runs = list(RUNS[name]) if RUNS[name] is not None else list(aa.attacks_to_run)
        if classes < MIN_CLASSES_DLR and "apgd-t" in runs:  # its targeted DLR loss reads the 4th-largest logit
            if RUNS[name] is not None:
                raise UsageError(f"{name} needs at least {MIN_CLASSES_DLR} classes (its targeted DLR loss); the "
                                 f"model has {classes}")
            runs.remove("apgd-t")
        aa.attacks_to_run = runs
        x_adv, _ = aa.run_standard_evaluation(x.detach(), y.detach(), batch_size=len(x))
    return x_adv.to(x.dtype)
