"""The mode registry and the resolved run: one rule per fact, and Table 2 computed once."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from manifoldadv import training
from manifoldadv.errors import UsageError
from manifoldadv.study import paper, tables
from manifoldadv.study.study import Study
from manifoldadv.training import MODES, mode

PACKAGE = Path(__file__).resolve().parents[1] / "manifoldadv"


def test_no_mode_name_compared_outside_the_registry():
    """Rules about modes live in modes.py: nowhere else compares a mode's name."""
    pattern = re.compile(r"\bmode (==|!=|in \(|not in \()")  # a mode, not padding_mode
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py") if p.name != "modes.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_no_typer_enum_reaches_the_library():
    found = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if re.search(r"getattr\([^)]*\"value\"", p.read_text())]
    assert found == []


def test_registry_facts():
    assert [m for m in MODES if MODES[m].needs_cvae] == ["vae", "joint"]
    assert [m for m in MODES if MODES[m].joint] == ["joint-lp", "joint", "joint-eigen"]
    assert [m for m in MODES if MODES[m].needs_basis] == ["eigen", "joint-eigen"]
    # the eps ramp is for unrestricted attacks: eigen-adv has none, its joint mode has PGD's
    assert not MODES["eigen"].regular and MODES["joint-eigen"].regular
    assert [m for m in MODES if MODES[m].generator] == ["cvae"]
    assert not MODES["std"].adversarial and MODES["fgsm"].clean_weight == 0.5
    assert MODES["vae"].adversarial and not MODES["vae"].regular and MODES["joint"].regular
    with pytest.raises(UsageError, match="unknown mode 'banana'"):
        mode("banana")


@pytest.mark.parametrize("strategy", ["avg", "max"])
def test_combine_is_the_mean_or_the_per_example_max(strategy):
    g = torch.Generator().manual_seed(0)
    losses = [torch.rand(7, generator=g, dtype=torch.float64) for _ in range(2)]
    want = [max(a, b) if strategy == "max" else (a + b) / 2 for a, b in zip(losses[0].tolist(), losses[1].tolist())]
    assert MODES["joint"].combine(losses, strategy).tolist() == pytest.approx(want, rel=1e-15)


def test_one_checkpoint_name_for_train_and_the_study(tmp_path):
    """`train --strategy max` and the study name a joint model's checkpoint alike; a single-attack
    mode has no strategy to record."""
    cfg = training.resolve_config("synthetic", "joint", strategy="max")
    study = Study("synthetic", tmp_path / "run", "cpu", strategy="max", autoattack=False)
    assert cfg.checkpoint_path(study.run_dir) == study.path("joint") == study.run_dir / "synthetic-joint-max.safetensors"
    assert training.resolve_config("synthetic", "pgd", strategy="max").strategy == "avg"
    assert study.path("pgd").name == "synthetic-pgd.safetensors"


def test_the_run_is_frozen_and_keyed_by_what_makes_it():
    cfg = training.resolve_config("synthetic", "pgd", epochs=3, adv_start=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 4
    key = json.loads(cfg.cache_key())
    assert set(key) == set(training.config.IDENTITY) and key["epochs"] == 3
    # the CVAE's path is where it is, not what it is: only its digest enters the key
    assert cfg.with_cvae("a/c.safetensors", "d1").cache_key() == cfg.with_cvae("b/c.safetensors", "d1").cache_key()
    assert cfg.with_cvae("a/c.safetensors", "d1").cache_key() != cfg.with_cvae("a/c.safetensors", "d2").cache_key()
    assert training.mismatched(cfg.identity(), dataclasses.replace(cfg, lr=0.5)) == ["lr"]
    # a checkpoint that lacks a setting (an older version's) does not match
    old = {k: v for k, v in cfg.identity().items() if k != "eps_warmup"}
    assert training.mismatched(old, cfg) == ["eps_warmup"]


def test_drops_are_differences_of_table2_cells():
    t2 = {"lp": {"l1": {"l1": 0.7, "pgd": 0.1, "joint-lp": 0.5}, "pgd": {"l1": 0.0, "pgd": 0.9, "joint-lp": 0.6}},
          "gen": {"pgd": {"pgd": 0.8, "vae": 0.2, "joint": 0.75}, "vae": {"pgd": 0.3, "vae": 0.9, "joint": 0.5}}}
    d = tables.drops(t2)
    assert d["joint-lp"] == pytest.approx({"l1": 0.2, "pgd": 0.3, "mean": 0.25})
    assert d["joint"] == pytest.approx({"pgd": 0.05, "vae": 0.4, "mean": 0.225})
    # the paper's drops come from the same formula over its own Table 2 (MNIST, l1 vs l-inf)
    ref = paper.table2("mnist")["lp"]
    assert tables.paper_drops("mnist")["joint-lp"]["l1"] == pytest.approx(ref["l1"]["l1"] - ref["l1"]["joint-lp"])
    assert tables.paper_drops("synthetic") is None


def test_one_table_description_renders_as_markdown_and_rich():
    t2 = {"lp": {"l1": {"l1": 0.7, "pgd": 0.1, "joint-lp": 0.5}, "pgd": {"l1": 0.0, "pgd": 0.9, "joint-lp": 0.6}},
          "gen": {"pgd": {"pgd": 0.8, "vae": 0.2, "joint": 0.75}, "vae": {"pgd": 0.3, "vae": 0.9, "joint": 0.5}},
          "l1_slide_only": {"l1": 0.75, "pgd": 0.2, "joint-lp": 0.55}}
    t2["drops"] = tables.drops(t2)
    lp, gen = tables.table2(t2, "synthetic")
    assert tables.markdown(lp).splitlines()[:4] == [
        "*l1 vs l-inf*", "", "|  | l1-adv | l-inf-adv | joint (l1+linf) |", "|---|---|---|---|"]
    assert "| l-inf-attack | 0.00% | 90.00% | 60.00% |" in tables.markdown(lp)
    assert "SLIDE alone: l1-adv 75.00%, l-inf-adv 20.00%, joint (l1+linf) 55.00%." in tables.markdown(lp)
    drops = tables.markdown(tables.drops_table(t2, "synthetic"))
    assert "| joint (PGD+VAE) vs PGD-adv / VAE-adv | +5.0 pp | +40.0 pp | +22.5 pp |" in drops
    rich = tables.rich(gen)
    assert [c.header for c in rich.columns] == gen.header and rich.row_count == len(gen.rows)
