"""`reproduce`: the paper's whole study in one resumable run, ending in a report.

Steps: train the CVAE and every classifier the study needs (std, FGSM-adv, PGD-adv = l-inf-adv,
VAE-adv, joint, l1-adv, joint-lp, eigen-adv, joint-eigen); Table 1 (attack matrix); Table 2 and the trade-off; the
spectra of the clean and robust test sets (Figure 2); `theory verify`; figures, `results.json`
and `report.md`. Each step's result is cached in the run directory (see `study.py`), so a
re-run skips what is finished and a killed run loses at most the epoch or the step in progress.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np

from ..runtime import accel, console
from . import paper, report, tables
from ..checkpoint import digest, load
from ..runtime.outputs import atomic_write_text, cache_key
from ..data import Dataset
from ..runtime import versions
from ..evaluation.spectrum import DEFAULT_FLOOR_REL, TOP, SetSpectrum, compute, plot, summarize_all
from ..training import CVAE
from .study import ALL_MODES, QUICK_SKIPS, Study

THEORY_SAMPLES = {"quick": 20_000, "full": 200_000}
# for the report's figure: a nearly rank-5 spectrum, where Theorems 5 and 6 separate cleanly
FIGURE_SPECTRUM = dict(lam=[8, 4, 2, 1, 0.5, 0.02, 0.015, 0.01, 0.008, 0.006, 0.005, 0.004], q=5, strategy=1,
                       L=4.0, L_orig=4.0)


def _cached(study: Study, name: str, key: dict, fn):
    """Run fn() unless results/<name>.json holds a result made with the same key."""
    cache, k = study.cache(name), cache_key(key)
    hit = cache.get(k)
    if hit is None:
        t0 = time.perf_counter()
        hit = {"value": fn(), "seconds": round(time.perf_counter() - t0, 1)}
        study.timings[name] = hit["seconds"]
        cache.put(k, hit)
    study.step_seconds[name] = hit["seconds"]  # what the result cost when it was made
    return hit["value"]


def replicate_spectra(study: Study, ds: Dataset, top: int) -> dict:
    """training seed -> the Figure 2 summary of that replicate's PGD- and VAE-robust sets (those of
    the two it trained: the spread of the Figure 2 ratios over training seeds)."""
    out = {}
    full = dataclasses.replace(ds, test=study.spectra_test or ds.test)
    modes = [m for m in ("pgd", "vae") if m in study.seeded_modes]
    for seed in study.train_seeds:
        rep = study.replicate(seed)
        if rep is study or not modes:
            continue
        paths = [rep.path(m) for m in modes]
        key = {**{m: digest(p) for m, p in zip(modes, paths)}, "cvae": digest(rep.path(CVAE)), "n": len(full.test),
               "steps": study.eval_steps, "seed": rep.seed, "top": top, "floor": DEFAULT_FLOOR_REL,
               "precision": study.precision}

        def run(paths=paths, rep=rep):
            sets = compute(paths, full, list(range(ds.num_classes)), study.device, seed=rep.seed,
                           steps=study.eval_steps, reconstructions=True, top=top, precision=study.precision,
                           compile=accel.resolve_compile(study.compile, study.device, "eval"))
            return summarize_all(sets, top=top)

        out[str(seed)] = _cached(rep, "spectra", key, run)
    return out


def spectra_step(study: Study, ds: Dataset) -> dict:
    """Figure 2: the clean set and the PGD-, VAE- and eigen-robust sets (each model attacked as it
    was trained: spectrum.auto_attack); the training-seed replicates' PGD- and VAE-robust sets."""
    pgd, vae, eigen = (study.ensure_trained(m, ds) for m in ("pgd", "vae", "eigen"))
    basis = study.basis(ds)
    top = ds.info.get("manifold_rank", TOP)
    classes = list(range(ds.num_classes))
    full = dataclasses.replace(ds, test=study.spectra_test or ds.test)
    key = {"pgd": digest(pgd), "vae": digest(vae), "eigen": digest(eigen), "cvae": digest(study.path(CVAE)),
           "eigenbasis": [basis.digest, basis.k], "n": len(full.test), "steps": study.eval_steps, "seed": study.seed,
           "top": top, "floor": DEFAULT_FLOOR_REL, "precision": study.precision}

    def run():
        sets = compute([pgd, vae, eigen], full, classes, study.device, basis=basis, seed=study.seed, steps=study.eval_steps,
                       reconstructions=True, top=top, precision=study.precision,
                       compile=accel.resolve_compile(study.compile, study.device, "eval"))
        return {"top": top, "floor_rel": DEFAULT_FLOOR_REL, "summary": summarize_all(sets, top=top),
                "sets": [{"name": s.name, "checkpoint": s.checkpoint, "attack": s.attack, "baseline": s.baseline,
                          "counts": s.counts.tolist(),
                          "eigenvalues": {str(c): ev.tolist() for c, ev in s.eigenvalues.items()}} for s in sets]}

    value = _cached(study, "spectra", key, run)
    sets = [SetSpectrum(s["name"], s["checkpoint"], s["attack"], np.array(s["counts"]),
                        {int(c): np.array(ev) for c, ev in s["eigenvalues"].items()}, s.get("baseline"))
            for s in value["sets"]]
    figs = study.run_dir / "figures"
    plot(figs / "spectra.png", sets, [0, 1], top=top, title=f"{study.data}: eigenvalues of classes 0 and 1 (Figure 2)")
    plot(figs / "spectra_all.png", sets, classes, top=top, title=f"{study.data}: eigenvalues of every class")
    return {"top": value["top"], "floor_rel": value["floor_rel"], "summary": value["summary"], "dim": ds.dim,
            "replicates": replicate_spectra(study, ds, top),
            "figures": ["figures/spectra.png", "figures/spectra_all.png"]}


def theory_step(study: Study) -> dict:
    from ..theory import save_figure, theory_figure, verify

    samples = THEORY_SAMPLES["quick" if study.quick else "full"]
    rows = _cached(study, "theory", {"samples": samples, "seed": study.seed},
                   lambda: verify(samples=samples, seed=study.seed))
    fig, _, _ = theory_figure(**FIGURE_SPECTRUM)
    save_figure(fig, study.run_dir / "figures" / "theory.png")
    return {"samples": samples, "checks": rows, "passed": sum(r["passed"] is True for r in rows),
            "total": len(rows), "figure": "figures/theory.png"}


def generator_record(study: Study) -> dict:
    """Which generator the latent attacks used, its size and the latent budget that follows."""
    meta = load(study.path(CVAE)).meta
    return {"model": study.generator, "checkpoint": str(study.path(CVAE)), "sha256": digest(study.path(CVAE)),
            "model_kwargs": meta.get("model_kwargs"), "latent_eps": study.budgets["latent"],
            "test_nelbo": meta.get("test_nelbo"), "active_units": meta.get("active_units")}


def replicate_models(study: Study) -> dict:
    """training seed -> mode -> checkpoint and clean accuracy of each replicate model."""
    out = {}
    for mode in study.seeded_modes:
        for rep in study.replicates(mode)[1:]:
            meta = load(rep.path(mode)).meta
            out.setdefault(str(rep.seed), {})[mode] = {"checkpoint": str(rep.path(mode)), "sha256": digest(rep.path(mode)),
                                                       "clean_accuracy": meta.get("clean_accuracy")}
    return out


def run(study: Study, ds: Dataset, *, theory: bool = True) -> dict:
    t0 = time.perf_counter()
    every = (CVAE, *ALL_MODES)
    for name in every:
        study.ensure_trained(name, ds)
    for name in study.seeded_modes:
        for rep in study.replicates(name)[1:]:
            rep.ensure_trained(name, ds)
    table1 = study.table1(ds)
    trade = study.tradeoff(ds)
    audits = study.audits(ds) if study.audit else None
    spectra = spectra_step(study, ds)
    th = theory_step(study) if theory else None
    report.heatmap(study.run_dir / "figures" / "attack_defence.png", table1,
                   f"{study.data}: test accuracy, attack x defence")
    wall = time.perf_counter() - t0

    models = {}
    compute_seconds = 0.0
    for name in every:
        meta = load(study.path(name)).meta
        secs = sum(h.get("seconds", 0.0) for h in meta.get("history", []))
        compute_seconds += secs
        models[name] = {"checkpoint": str(study.path(name)), "hparams": meta["hparams"], "epochs": meta["epoch"],
                        "train_seconds": round(secs, 1),
                        **({"clean_accuracy": meta["clean_accuracy"]} if "clean_accuracy" in meta else
                           {"test_nelbo": meta.get("test_nelbo"), "test_recon_mse": meta.get("test_recon_mse")})}
    evals = study.cache("evals").entries()
    eval_seconds = sum(r.get("seconds", 0.0) for r in evals.values())
    results = {
        "data": study.data,
        "quick": study.quick,
        "seed": study.seed,
        "strategy": study.strategy,
        "device": str(study.device),
        "precision": study.precision,
        "compile": {p: accel.resolve_compile(study.compile, study.device, p) for p in accel.PURPOSES},
        "n_train": len(ds.train),
        "n_test": len(ds.test),
        "n_test_spectra": len(study.spectra_test or ds.test),
        "eval_steps_override": study.eval_steps,
        "train_steps_override": study.train_steps,
        "versions": versions(),
        "wall_seconds_this_run": round(wall, 1),
        "compute_seconds_recorded": round(compute_seconds + eval_seconds + sum(study.step_seconds.values()), 1),
        "train_seconds_recorded": round(compute_seconds, 1),
        "eval_seconds_recorded": round(eval_seconds, 1),
        "step_seconds_this_run": study.timings,
        "models": models,
        "generator": generator_record(study),
        "seeds": {"eval": list(study.seeds()), "train": [study.seed, *(s for s in study.train_seeds if s != study.seed)],
                  "seeded_modes": list(study.seeded_modes) if study.train_seeds else [],
                  "replicates": replicate_models(study)},
        "cells": [{"attack": a, "mode": m, **c} for (a, m), c in study.cells.items()],
        "table1": table1,
        "table1_paper": paper.table1(study.data),
        "tradeoff": trade,
        "autoattack": {"examples": len(study.checked(ds.test)),
                       "skipped": [a for a in QUICK_SKIPS if study.quick]} if study.autoattack else None,
        "audit": {"examples": len(study.checked(ds.test)), "models": audits} if audits else None,
        "tradeoff_paper": {"table2": paper.table2(study.data), "drops": tables.paper_drops(study.data)},
        "evaluations": list(evals.values()),
        "spectra": spectra,
        "eigenbasis": study.basis(ds).describe(),
        "theory": th,
        "figures": ["figures/attack_defence.png"] + spectra["figures"] + ([th["figure"]] if th else []),
    }
    atomic_write_text(study.run_dir / "results.json", json.dumps(console.to_jsonable(results), indent=1))
    atomic_write_text(study.run_dir / "report.md", report.render(results))
    return results
