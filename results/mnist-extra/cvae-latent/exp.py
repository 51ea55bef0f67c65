"""Does the VAE-robust set's top-30 ratio depend on the CVAE's latent size? (experiment)

The paper's MNIST CVAE (B.1) has a 10-d latent; the latent FGSM can then move each class along
~10 directions only, while the summary averages the top 30. Trains a CVAE-MLP with a larger
latent (Bernoulli, the paper's 20 epochs, batch 64, lr 1e-3) and measures the reconstructions and
the latent attack (eps 1, FGSM) against the existing VAE-adv classifier, like exp.py of
../cvae-likelihood. Usage: python exp.py LATENT
"""
import json, sys, time, numpy as np, torch
from pathlib import Path
from manifoldadv import checkpoint, data, spectrum, training
from manifoldadv.attacks import make_spec
torch.manual_seed(0)
ds = data.load_mnist(Path("/work/shared/data/mnist"))
dev = torch.device("cpu"); classes = list(range(10))
out_dir = Path("runs/cvae-latent"); out_dir.mkdir(parents=True, exist_ok=True)
latent = int(sys.argv[1])
ck = out_dir / f"cvae-latent{latent}.safetensors"
if not ck.exists():
    cfg = training.resolve_config("mnist", "cvae", seed=0)
    cfg.model_kwargs = {**cfg.model_kwargs, "latent": latent}
    t = time.perf_counter()
    training.train(cfg, ds, device=dev, out=ck)
    print("trained", time.perf_counter() - t, flush=True)
model, _ = checkpoint.load_model("runs/mnist-fast/mnist-vae.safetensors", kind="classifier", device=dev)
counts, _, covs = spectrum.accumulate(ds.test, classes, device=dev)
clean = spectrum.SetSpectrum("clean", None, "none", counts.numpy(), spectrum.class_spectra(counts, covs, classes))
res = {}
cvae, meta = checkpoint.load_model(ck, kind="cvae", device=dev)
for what, spec in (("recon", make_spec("vae", "mnist", eps=0.0)), ("vae", make_spec("vae", "mnist"))):
    counts, _, covs = spectrum.accumulate(ds.test, classes, device=dev, model=model, spec=spec, cvae=cvae)
    s = spectrum.SetSpectrum(what, None, what, counts.numpy(), spectrum.class_spectra(counts, covs, classes))
    rows = spectrum.summarize(clean, s)
    g = lambda k: float(np.exp(np.mean([np.log(r[k]) for r in rows])))
    top_k = {f"top{k}": float(np.exp(np.mean([np.log(r["top_ratio"]) for r in spectrum.summarize(clean, s, top=k)]))) for k in (5, 10)}
    res[what] = {"top30": g("top_ratio"), "tail": g("tail_ratio"), **top_k, "classes_top_gt1": sum(r["top_ratio"] > 1 for r in rows),
                 "per_class_top30": [r["top_ratio"] for r in rows], "nelbo": meta.get("test_nelbo"), "mse": meta.get("test_recon_mse")}
    print(latent, what, {k: v for k, v in res[what].items() if k != "per_class_top30"}, flush=True)
(out_dir / f"exp-latent{latent}.json").write_text(json.dumps(res, indent=1))
