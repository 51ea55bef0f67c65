"""Which generator keeps the MNIST manifold, and what VAE-adversarial training with it does to
the spectrum (issue 30, items 1-2):

    python experiments/generators.py --data-root DIR --run-dir runs/mnist-generators \\
        --out results/mnist-generators/generators.json [--generators cvae-mlp,cvae-gauss,ppca]

Per generator (the study's Bernoulli `cvae-mlp` with latent 10, `cvae-gauss`, `ppca`): fit or
train it (config defaults: 20 epochs for the CVAEs, --seed; one closed-form pass for ppca), then
on the 10000 test images: test -ELBO, reconstruction MSE, active units, and how much of each
class's clean top-5/10/30 eigen-variance its reconstructions keep (evaluation/generator.py: the
spectrum ratio and the share kept along the clean eigen-directions). Then a VAE-adv LeNet5
trained with that generator (the paper's schedule: 30 epochs, adversarial from 10, --seed) and
its Figure 2 ratios: the latent FGSM against it, as the study's VAE-robust set, top-30 and tail
against the clean set and against the reconstructions.

Latent budgets: the latent FGSM moves every coordinate by eps, so its latent step grows like
sqrt(latent size); each generator's eps is the paper's 1 (for its 10-d latent) times
sqrt(10 / latent), the same l2 length of latent step in units of the prior's spread
(config.latent_eps, the rule of the study and the CLI).
Resumable: every checkpoint is kept in --run-dir and reused when complete. --seed N (default 0)
trains everything with another seed (checkpoints named ...-sN).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from manifoldadv import checkpoint, data, training
from manifoldadv.attacks import make_spec
from manifoldadv.config import latent_eps
from manifoldadv.evaluation import generator, spectrum
from manifoldadv.runtime import versions

GENERATORS = ("cvae-mlp", "cvae-gauss", "ppca")


def gmean(values) -> float:
    return float(np.exp(np.mean(np.log(values))))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path)
    p.add_argument("--run-dir", type=Path, required=True, help="checkpoints (kept and reused)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--generators", default=",".join(GENERATORS))
    p.add_argument("--no-classifier", action="store_true", help="generator metrics only (no VAE-adv training)")
    p.add_argument("--seed", type=int, default=0, help="training seed of every generator and classifier (default 0)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    tag = "" if a.seed == 0 else f"-s{a.seed}"
    dev = torch.device(a.device)
    ds = data.load_mnist(data.data_root(a.data_root))
    classes = list(range(10))
    a.run_dir.mkdir(parents=True, exist_ok=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    counts, _, covs = spectrum.accumulate(ds.test, classes, device=dev)
    clean = spectrum.SetSpectrum("clean", None, "none", counts.cpu().numpy(), spectrum.class_spectra(counts, covs, classes))
    res = json.loads(a.out.read_text()) if a.out.exists() else {}
    res.update(versions=versions(), test_images=len(ds.test), seed=a.seed)
    for name in a.generators.split(","):
        t0 = time.perf_counter()
        cfg = training.resolve_config("mnist", "cvae", model=name, seed=a.seed)
        path = a.run_dir / f"mnist-{name}{tag}.safetensors"
        training.ensure_trained(cfg, ds, device=dev, out=path)
        g, meta = checkpoint.load_model(path, kind="cvae", device=dev)
        g.eval()
        row = {"checkpoint": str(path), "sha256": checkpoint.digest(path), "model": name,
               "model_kwargs": meta["model_kwargs"], "train_seconds": sum(h["seconds"] for h in meta["history"]),
               **generator.generator_metrics(g, ds.test, classes, dev)}
        row["latent_eps"] = latent_eps("mnist", g.latent)
        print(name, {k: v for k, v in row.items() if not k.endswith("per_class")}, flush=True)
        if not a.no_classifier:
            vcfg = training.resolve_config("mnist", "vae", seed=a.seed, budgets={"latent": row["latent_eps"]})
            vpath = a.run_dir / f"mnist-vae-{name}{tag}.safetensors"
            vcfg, g2 = training.with_cvae(vcfg, ds, device=dev, out=vpath, cvae=path)
            training.ensure_trained(vcfg, ds, device=dev, out=vpath, cvae=g2)
            clf, cmeta = checkpoint.load_model(vpath, kind="classifier", device=dev)
            spec = make_spec("vae", "mnist", eps=row["latent_eps"])
            counts, _, covs = spectrum.accumulate(ds.test, classes, device=dev, transform=spectrum.attacked(clf, spec, g))
            robust = spectrum.SetSpectrum("vae", None, "vae", counts.cpu().numpy(), spectrum.class_spectra(counts, covs, classes))
            counts, _, covs = spectrum.accumulate(ds.test, classes, device=dev, transform=spectrum.reconstructed(g))
            recon = spectrum.SetSpectrum("recon", None, "recon", counts.cpu().numpy(),
                                         spectrum.class_spectra(counts, covs, classes))
            fig2 = {}
            for ref_name, ref in (("clean", clean), ("recon", recon)):
                for k in (5, 10, 30):
                    rows = spectrum.summarize(ref, robust, top=k)
                    fig2[f"vs_{ref_name}_top{k}"] = gmean([r["top_ratio"] for r in rows])
                    if k == 30:
                        fig2[f"vs_{ref_name}_tail"] = gmean([r["tail_ratio"] for r in rows])
                        fig2[f"vs_{ref_name}_top30_per_class"] = [r["top_ratio"] for r in rows]
            row["vae_adv"] = {"checkpoint": str(vpath), "sha256": checkpoint.digest(vpath),
                              "clean_accuracy": cmeta.get("clean_accuracy"),
                              "train_seconds": sum(h["seconds"] for h in cmeta["history"]), "figure2": fig2}
            print(name, "VAE-adv", {k: v for k, v in fig2.items() if not k.endswith("per_class")}, flush=True)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        res[name] = row
        a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
