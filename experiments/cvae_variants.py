"""How does the MNIST VAE-robust spectrum depend on the CVAE?

The study's VAE-robust set keeps its top-30 spectrum ratio below 1; this asks whether another CVAE
changes that:

    python experiments/cvae_variants.py gaussian SIGMA ...   # Gaussian likelihood with fixed sigma,
                                                             # beside the study's Bernoulli CVAE
    python experiments/cvae_variants.py latent N ...         # Bernoulli CVAE with an N-d latent (paper: 10)

Trains the variant (the paper's CVAE schedule: 20 epochs, batch 64, lr 1e-3, seed 0) unless its
checkpoint exists, then measures the clean reconstructions G(I(x)) and the latent attack (FGSM,
eps 1) against the study's VAE-adv classifier: geometric means over classes of the top-30 /
top-10 / top-5 and tail ratios against the clean test set (floor 1e-6 x the clean class's largest
eigenvalue), with the CVAE's test NELBO and reconstruction MSE.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from manifoldadv import checkpoint, data, training
from manifoldadv.evaluation import spectrum
from manifoldadv.attacks import make_spec


def gmean(rows, key):
    return float(np.exp(np.mean([np.log(r[key]) for r in rows])))


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train an MNIST CVAE variant (unless its checkpoint exists) and measure the spectra of its "
                    "reconstructions and of its latent attack against the study's VAE-adv classifier.")
    p.add_argument("kind", choices=("gaussian", "latent"),
                   help="gaussian: Gaussian likelihood with fixed sigma; latent: Bernoulli with another latent size")
    p.add_argument("value", help="sigma (gaussian) or the latent size N (latent)")
    p.add_argument("--run-dir", type=Path, required=True,
                   help="the MNIST study's folder (reproduce --data mnist --run-dir): mnist-vae.safetensors (the "
                        "VAE-adv classifier attacked) and, for gaussian, mnist-cvae.safetensors (the Bernoulli CVAE "
                        "measured beside the variant)")
    p.add_argument("--data-root", type=Path,
                   help="folder with the MNIST files (default: $MANIFOLDADV_DATA, else ~/.cache/manifoldadv)")
    p.add_argument("--cvae-dir", type=Path,
                   help="where the variant's checkpoint is kept (cvae-gauss-SIGMA.safetensors or "
                        "cvae-latentN.safetensors; trained there unless it exists; default: the folder of --out)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu, where the recorded runs were made)")
    args = p.parse_args(argv)
    try:
        args.value = float(args.value) if args.kind == "gaussian" else int(args.value)
    except ValueError:
        p.error(f"{args.kind} needs a {'number' if args.kind == 'gaussian' else 'whole number'}, got {args.value!r}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    ds = data.load_mnist(data.data_root(args.data_root))
    dev = torch.device(args.device)
    classes = list(range(10))
    cvae_dir = args.cvae_dir if args.cvae_dir is not None else args.out.parent
    cfg = training.resolve_config("mnist", "cvae", seed=0)
    if args.kind == "gaussian":
        tag = f"{args.value:g}"
        ck = cvae_dir / f"cvae-gauss-{tag}.safetensors"
        cfg = dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "likelihood": "gaussian", "sigma": args.value})
        cvaes = {"bernoulli": str(args.run_dir / training.mode("cvae").checkpoint_name("mnist")), f"gauss{tag}": str(ck)}
    else:
        ck = cvae_dir / f"cvae-latent{args.value}.safetensors"
        cfg = dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "latent": args.value})
        cvaes = {f"latent{args.value}": str(ck)}
    cvae_dir.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not ck.exists():
        t = time.perf_counter()
        training.train(cfg, ds, device=dev, out=ck)
        print("trained", time.perf_counter() - t, flush=True)
    model, _ = checkpoint.load_model(args.run_dir / training.mode("vae").checkpoint_name("mnist"), kind="classifier", device=dev)
    counts, _, covs = spectrum.accumulate(ds.test, classes, device=dev)
    clean = spectrum.SetSpectrum("clean", None, "none", counts.cpu().numpy(),
                                 spectrum.class_spectra(counts, covs, classes))

    res = {}
    for name, path in cvaes.items():
        cvae, meta = checkpoint.load_model(path, kind="cvae", device=dev)
        # the latent FGSM takes no steps, step size or restarts: the data set's defaults only (eps 1)
        for what, transform in (("recon", spectrum.reconstructed(cvae)),
                                ("vae", spectrum.attacked(model, make_spec("vae", "mnist"), cvae))):
            counts, _, covs = spectrum.accumulate(ds.test, classes, device=dev, transform=transform)
            s = spectrum.SetSpectrum(what, None, what, counts.cpu().numpy(),
                                     spectrum.class_spectra(counts, covs, classes))
            rows = spectrum.summarize(clean, s)
            res[f"{name} {what}"] = {
                "top30": gmean(rows, "top_ratio"), "tail": gmean(rows, "tail_ratio"),
                **{f"top{k}": gmean(spectrum.summarize(clean, s, top=k), "top_ratio") for k in (5, 10)},
                "classes_top_gt1": sum(r["top_ratio"] > 1 for r in rows),
                "per_class_top30": [r["top_ratio"] for r in rows],
                "nelbo": meta.get("test_nelbo"), "mse": meta.get("test_recon_mse")}
            print(name, what, {k: v for k, v in res[f"{name} {what}"].items() if k != "per_class_top30"}, flush=True)
    args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
