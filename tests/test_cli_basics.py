import json

from typer.testing import CliRunner

from manifoldadv.cli import app

runner = CliRunner()


def test_info_json_parses_and_lists_backends():
    r = runner.invoke(app, ["info", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data["backends"]) == {"pgd_step", "pgd_step_", "class_cov", "fused_attack"}
    for per_device in data["backends"].values():
        assert set(per_device.values()) <= {"compiled", "reference"}
    assert data["versions"]["torch"]


def test_info_says_which_attacks_run_fused(monkeypatch):
    from manifoldadv.ops import attack_engine

    monkeypatch.delenv("MANIFOLDADV_FUSED_ATTACK", raising=False)
    eng = json.loads(runner.invoke(app, ["info", "--json"]).stdout)["attack_engine"]
    assert eng["enabled"] and eng["compiled"] == attack_engine.compiled()
    assert eng["attacks"] == (["fgsm", "pgd", "l2", "l1"] if eng["compiled"] else [])
    monkeypatch.setenv("MANIFOLDADV_FUSED_ATTACK", "0")
    eng = json.loads(runner.invoke(app, ["info", "--json"]).stdout)["attack_engine"]
    assert not eng["enabled"] and eng["attacks"] == []
    assert "MANIFOLDADV_FUSED_ATTACK=0" in runner.invoke(app, ["info"]).stdout


def test_info_names_the_cuda_l2_kernel(monkeypatch):
    monkeypatch.delenv("MANIFOLDADV_CUDA_L2", raising=False)
    assert json.loads(runner.invoke(app, ["info", "--json"]).stdout)["cuda_l2_kernel"] == "block"
    monkeypatch.setenv("MANIFOLDADV_CUDA_L2", "registers")
    assert json.loads(runner.invoke(app, ["info", "--json"]).stdout)["cuda_l2_kernel"] == "registers"


def test_unknown_option_is_one_error_line_exit_2():
    r = runner.invoke(app, ["info", "--no-such-flag"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in r.output
