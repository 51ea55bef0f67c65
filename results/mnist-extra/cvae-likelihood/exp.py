"""Which MNIST CVAE likelihood keeps the VAE-robust set's top eigenvalues? (experiment)"""
import json, sys, time, numpy as np, torch
from pathlib import Path
from manifoldadv import checkpoint, data, spectrum, training
from manifoldadv.attacks import make_spec
torch.manual_seed(0)
ds = data.load_mnist(Path("/work/shared/data/mnist"))
dev = torch.device("cpu"); classes = list(range(10))
out_dir = Path("runs/cvae-exp")
sigma = float(sys.argv[1])
ck = out_dir / f"cvae-gauss-{sigma:g}.safetensors"
if not ck.exists():
    cfg = training.resolve_config("mnist", "cvae", seed=0)
    cfg.model_kwargs = {**cfg.model_kwargs, "likelihood": "gaussian", "sigma": sigma}
    t = time.perf_counter()
    training.train(cfg, ds, device=dev, out=ck)
    print("trained", time.perf_counter() - t, flush=True)
cvaes = {"bernoulli": "runs/mnist-fast/mnist-cvae.safetensors", f"gauss{sigma:g}": str(ck)}
model, _ = checkpoint.load_model("runs/mnist-fast/mnist-vae.safetensors", kind="classifier", device=dev)
counts, _, covs = spectrum.accumulate(ds.test, classes, device=dev)
clean = spectrum.SetSpectrum("clean", None, "none", counts.numpy(), spectrum.class_spectra(counts, covs, classes))
res = {}
for name, path in cvaes.items():
    cvae, meta = checkpoint.load_model(path, kind="cvae", device=dev)
    for what, spec in (("recon", make_spec("vae", "mnist", eps=0.0)), ("vae", make_spec("vae", "mnist"))):
        counts, _, covs = spectrum.accumulate(ds.test, classes, device=dev, model=model, spec=spec, cvae=cvae)
        s = spectrum.SetSpectrum(what, None, what, counts.numpy(), spectrum.class_spectra(counts, covs, classes))
        rows = spectrum.summarize(clean, s)
        g = lambda k: float(np.exp(np.mean([np.log(r[k]) for r in rows])))
        res[f"{name} {what}"] = {"top30": g("top_ratio"), "tail": g("tail_ratio"), "classes_top_gt1": sum(r["top_ratio"] > 1 for r in rows),
                                 "nelbo": meta.get("test_nelbo"), "mse": meta.get("test_recon_mse")}
        print(name, what, res[f"{name} {what}"], flush=True)
(out_dir / f"exp-{sigma:g}.json").write_text(json.dumps(res, indent=1))
