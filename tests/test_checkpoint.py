import json

import pytest
import torch
from safetensors.torch import save_file

from manifoldadv import checkpoint, models
from manifoldadv.errors import CheckpointError

from helpers import assert_usage_error, cli

META = {"kind": "classifier", "model": "lenet5", "model_kwargs": {}, "in_shape": [1, 28, 28], "num_classes": 10,
        "mean": [0.1307], "std": [0.3081], "dataset": "mnist", "mode": "std", "epoch": 1, "epochs": 1}


def _saved(tmp_path, with_opt=False):
    torch.manual_seed(0)
    m = models.create("lenet5", in_shape=(1, 28, 28), num_classes=10, mean=(0.1307,), std=(0.3081,))
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    if with_opt:
        m(torch.rand(2, 1, 28, 28)).sum().backward()
        opt.step()
    p = tmp_path / "m.safetensors"
    checkpoint.save(p, m, META, opt if with_opt else None)
    return p, m, opt


def test_round_trip_weights_metadata_and_optimizer(tmp_path):
    p, m, opt = _saved(tmp_path, with_opt=True)
    ck = checkpoint.load(p, kind="classifier")
    m2 = ck.build()
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(m(x), m2(x))
    assert ck.meta["model"] == "lenet5" and ck.meta["format"] == "manifoldadv-checkpoint"
    opt2 = torch.optim.Adam(m2.parameters(), 1e-3)
    opt2.load_state_dict(ck.optimizer_state())
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(s1[k][name]), torch.as_tensor(s2[k][name]))
    assert [f.name for f in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left


def test_truncated_and_garbage_files_are_clear_errors(tmp_path):
    p, _, _ = _saved(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        checkpoint.load(p)
    p.write_bytes(b"\x80\x04this is a pickle, not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        checkpoint.load(p)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "absent.safetensors")


def test_foreign_safetensors_and_wrong_kind(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not a manifoldadv checkpoint"):
        checkpoint.load(other)
    p, _, _ = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="is a classifier checkpoint, expected a cvae"):
        checkpoint.load(p, kind="cvae")


def test_mismatched_weights_are_clear_error(tmp_path):
    p, m, _ = _saved(tmp_path)
    meta = dict(META, model="mlp")
    checkpoint.save(p, m, meta)
    with pytest.raises(CheckpointError, match="do not match model 'mlp'"):
        checkpoint.load(p).build()


def test_cli_corrupt_checkpoint_exit_2(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 10)
    assert_usage_error(cli("attack", bad), "bad.safetensors")
    assert_usage_error(cli("attack", tmp_path / "missing.safetensors"))


def test_metadata_is_plain_json(tmp_path):
    p, _, _ = _saved(tmp_path)
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        meta = json.loads(f.metadata()["manifoldadv"])
    assert meta["kind"] == "classifier"
