"""How does the MNIST VAE-robust spectrum depend on the CVAE? (experiments for issue 5)

    python exp.py gaussian SIGMA   # Gaussian likelihood with fixed sigma, against the paper's Bernoulli CVAE
    python exp.py latent N         # Bernoulli CVAE with an N-d latent (the paper's is 10)

Trains the variant (the paper's 20 epochs, batch 64, lr 1e-3) unless its checkpoint exists, then
measures the clean reconstructions G(I(x)) and the latent attack (FGSM, eps 1) against the
VAE-adv classifier of runs/mnist-fast: geometric means over classes of the top-30 / top-10 / top-5
and tail ratios against the clean test set (floor 1e-6 x the clean class's largest eigenvalue).
Writes runs/cvae-exp/exp-SIGMA.json or runs/cvae-latent/exp-latentN.json.
"""
import json, sys, time, numpy as np, torch
from pathlib import Path
from manifoldadv import checkpoint, data, spectrum, training
from manifoldadv.attacks import make_spec

kind, value = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
ds = data.load_mnist(Path("/work/shared/data/mnist"))
dev = torch.device("cpu"); classes = list(range(10))
cfg = training.resolve_config("mnist", "cvae", seed=0)
if kind == "gaussian":
    out_dir, tag = Path("runs/cvae-exp"), f"{float(value):g}"
    ck, out = out_dir / f"cvae-gauss-{tag}.safetensors", out_dir / f"exp-{tag}.json"
    cfg.model_kwargs = {**cfg.model_kwargs, "likelihood": "gaussian", "sigma": float(value)}
    cvaes = {"bernoulli": "runs/mnist-fast/mnist-cvae.safetensors", f"gauss{tag}": str(ck)}
elif kind == "latent":
    out_dir = Path("runs/cvae-latent")
    ck, out = out_dir / f"cvae-latent{int(value)}.safetensors", out_dir / f"exp-latent{int(value)}.json"
    cfg.model_kwargs = {**cfg.model_kwargs, "latent": int(value)}
    cvaes = {f"latent{int(value)}": str(ck)}
else:
    sys.exit("usage: exp.py gaussian SIGMA | latent N")
out_dir.mkdir(parents=True, exist_ok=True)
if not ck.exists():
    t = time.perf_counter()
    training.train(cfg, ds, device=dev, out=ck)
    print("trained", time.perf_counter() - t, flush=True)
model, _ = checkpoint.load_model("runs/mnist-fast/mnist-vae.safetensors", kind="classifier", device=dev)
counts, _, covs = spectrum.accumulate(ds.test, classes, device=dev)
clean = spectrum.SetSpectrum("clean", None, "none", counts.numpy(), spectrum.class_spectra(counts, covs, classes))


def gmean(rows, key):
    return float(np.exp(np.mean([np.log(r[key]) for r in rows])))


res = {}
for name, path in cvaes.items():
    cvae, meta = checkpoint.load_model(path, kind="cvae", device=dev)
    for what, transform in (("recon", spectrum.reconstructed(cvae)),
                            ("vae", spectrum.attacked(model, make_spec("vae", "mnist"), cvae))):
        counts, _, covs = spectrum.accumulate(ds.test, classes, device=dev, transform=transform)
        s = spectrum.SetSpectrum(what, None, what, counts.numpy(), spectrum.class_spectra(counts, covs, classes))
        rows = spectrum.summarize(clean, s)
        res[f"{name} {what}"] = {
            "top30": gmean(rows, "top_ratio"), "tail": gmean(rows, "tail_ratio"),
            **{f"top{k}": gmean(spectrum.summarize(clean, s, top=k), "top_ratio") for k in (5, 10)},
            "classes_top_gt1": sum(r["top_ratio"] > 1 for r in rows), "per_class_top30": [r["top_ratio"] for r in rows],
            "nelbo": meta.get("test_nelbo"), "mse": meta.get("test_recon_mse")}
        print(name, what, {k: v for k, v in res[f"{name} {what}"].items() if k != "per_class_top30"}, flush=True)
out.write_text(json.dumps(res, indent=1))
