"""PGD-40 against AutoAttack, and the audit, on the MNIST study's adversarially trained models.

    python experiments/mnist_autoattack.py --run-dir $RUN_DIR --data-root $DATA_ROOT --out DIR \
        [--n-test 500] [--n-audit 100] [--no-l1] [--models pgd,l1,joint]

Takes (or trains, as `reproduce --data mnist --train-steps 5` would) the PGD-adv (= Table 2's
l-inf-adv), l1-adv and joint (PGD + VAE) models of the run folder. On the first N test examples
it measures, per model, the l-inf row of Tables 1 and 2 (PGD-40, eps 0.2) beside AutoAttack's
standard version at the same budget, and for the l1-adv model the l1 row of Table 2 (SLIDE-40 +
Pointwise, eps 10) beside AutoAttack-l1 (unless --no-l1); PGD-40 also on the whole test set (the
study's own cell); then `audit` on the first --n-audit examples. Evaluations go through
`Study.accuracy` and are cached in the run folder like reproduce's; audits in DIR. Writes
DIR/autoattack.json (rows with wall times, the audit, versions) and DIR/autoattack.md
(autoattack-<models>.* for a subset).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from manifoldadv import checkpoint, data
from manifoldadv.runtime import console
from manifoldadv.evaluation.audit import audit
from manifoldadv.runtime.outputs import atomic_write_text
from manifoldadv.runtime import versions
from manifoldadv.study import Study

MODELS = {"pgd": "PGD-adv (l-inf-adv)", "l1": "l1-adv", "joint": "joint (PGD+VAE)"}
LINF = ("pgd", "autoattack")
L1 = ("l1-worst", "autoattack-l1")
L1_MODELS = ("l1",)  # AutoAttack-l1 takes minutes per 100 robust examples on this CPU


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--n-audit", type=int, default=100, help="the audit's examples (the first of the N)")
    p.add_argument("--no-l1", action="store_true", help="skip the l1 rows")
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default=",".join(MODELS), help="a subset of " + ",".join(MODELS))
    p.add_argument("--quick", action="store_true", help="reproduce's --quick schedules (a smoke run)")
    a = p.parse_args()
    device = torch.device(a.device)
    models = [m for m in a.models.split(",") if m]
    if any(m not in MODELS for m in models):
        p.error(f"--models: choose from {','.join(MODELS)}")
    study = Study("mnist", a.run_dir, device, quick=a.quick, train_steps=None if a.quick else 5,
                  autoattack=True)
    ds = study.subset(data.load_dataset("mnist", a.data_root))
    t0 = time.perf_counter()
    for mode in models:
        study.ensure_trained(mode, ds)
    trained_s = time.perf_counter() - t0
    small = dataclasses.replace(ds, test=ds.test.head(a.n_test))
    rows = []
    for mode in models:
        attacks = LINF + (() if a.no_l1 or mode not in L1_MODELS else L1)
        # PGD-40 on the whole test set too: the study's own Table 1/2 cell, to compare with its report
        for attack, split in [(x, small) for x in attacks] + [("pgd", ds)]:
            r = study.accuracy(mode, attack, split)
            rows.append({"model": mode, "attack": attack, "accuracy": r["accuracy"], "seconds": r["seconds"],
                         "eps": r.get("eps"), "steps": r.get("steps"), "n": len(split.test)})
            console.log(f"{mode} / {attack} on {len(split.test)}: {r['accuracy']:.2%} ({r['seconds']} s)")
    audits, cache_path = {}, a.out / "audit-cache.json"  # by checkpoint digest and examples
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    # the audit's check (j) measures the latent attack: the study's CVAE, trained if missing
    cvae, _ = checkpoint.load_model(study.ensure_trained("cvae", ds), kind="cvae", device=device)
    for mode in models:
        key = f"{checkpoint.digest(study.path(mode))}:{min(a.n_audit, a.n_test)}"
        if key not in cache:
            model, _ = checkpoint.load_model(study.path(mode), kind="classifier", device=device, dataset="mnist")
            t = time.perf_counter()
            checks = audit(model, small.test, "mnist", n=a.n_audit, device=device, seed=0, cvae=cvae, num_classes=10)
            cache[key] = {"seconds": round(time.perf_counter() - t, 1),
                          "checks": console.to_jsonable([c.as_dict() for c in checks])}
            a.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache_path, json.dumps(cache, indent=1))
        audits[mode] = cache[key]
        console.log(f"audit of {mode}: {sum(c['verdict'] == 'FAIL' for c in audits[mode]['checks'])} failed "
                    f"({audits[mode]['seconds']} s)")
    doc = {"what": __doc__.splitlines()[0], "n_test": a.n_test, "n_audit": min(a.n_audit, a.n_test), "quick": a.quick, "train_steps": study.train_steps, "device": str(device),
           "models": models,
           "checkpoints": {m: {"path": str(study.path(m)), "sha256": checkpoint.digest(study.path(m))} for m in models},
           "training_seconds_this_call": round(trained_s, 1), "rows": rows, "audit": audits,
           "versions": versions()}
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "autoattack" if models == list(MODELS) else "autoattack-" + "-".join(models)
    atomic_write_text(a.out / f"{stem}.json", json.dumps(doc, indent=1) + "\n")
    atomic_write_text(a.out / f"{stem}.md", render(doc))
    print(render(doc))


def render(doc) -> str:
    acc = {(r["model"], r["attack"]): r for r in doc["rows"] if r["n"] == doc["n_test"]}
    full = {r["model"]: r for r in doc["rows"] if r["n"] != doc["n_test"]}
    models = {m: MODELS[m] for m in doc["models"]}
    attacks = [x for x in LINF + L1 if any((m, x) in acc for m in models)]
    lines = [f"First {doc['n_test']} MNIST test examples; models of `reproduce --data mnist --train-steps 5`.", "",
             "| attack | " + " | ".join(models.values()) + " |", "|---" * (len(models) + 1) + "|"]
    for x in attacks:
        cells = [f"{acc[m, x]['accuracy']:.1%} ({acc[m, x]['seconds']:.0f} s)" if (m, x) in acc else "-" for m in models]
        lines.append(f"| {x} | " + " | ".join(cells) + " |")
    if full:
        n = next(iter(full.values()))["n"]
        lines.append(f"| pgd, all {n} | " + " | ".join(f"{full[m]['accuracy']:.1%} ({full[m]['seconds']:.0f} s)"
                                                        if m in full else "-" for m in models) + " |")
    lines += ["", f"Audit on the first {doc['n_audit']} (verdict per check):", "", "| check | " + " | ".join(models.values()) + " |",
              "|---" * (len(models) + 1) + "|"]
    names = [c["check"] for c in doc["audit"][next(iter(models))]["checks"]]
    for i, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(doc["audit"][m]["checks"][i]["verdict"] for m in models) + " |")
    lines.append("| wall time | " + " | ".join(f"{doc['audit'][m]['seconds']:.0f} s" for m in models) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
