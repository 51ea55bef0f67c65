"""VAE-robust set against the CVAE's clean reconstructions (same generator, eps 0) instead of D_test."""
import json, torch
from manifoldadv import checkpoint, data, spectrum
from manifoldadv.attacks import make_spec
torch.manual_seed(0)
ds = data.load_mnist(__import__("pathlib").Path("/work/shared/data/mnist"))
dev = torch.device("cpu"); classes = list(range(10))
model, _ = checkpoint.load_model("runs/mnist/mnist-vae.safetensors", kind="classifier", device=dev)
cvae, _ = checkpoint.load_model("runs/mnist/mnist-cvae.safetensors", kind="cvae", device=dev)
sets = {}
for name, spec in (("clean", None), ("recon", make_spec("vae", "mnist", eps=0.0)), ("vae", make_spec("vae", "mnist"))):
    counts, _, covs = spectrum.accumulate(ds.test, classes, device=dev, model=model if spec else None, spec=spec, cvae=cvae)
    sets[name] = spectrum.SetSpectrum(name, None, name, counts.numpy(), spectrum.class_spectra(counts, covs, classes))
out = {}
for ref in ("clean", "recon"):
    for rob in ("recon", "vae"):
        if ref == rob: continue
        rows = spectrum.summarize(sets[ref], sets[rob])
        import numpy as np
        g = lambda k: float(np.exp(np.mean([np.log(r[k]) for r in rows])))
        out[f"{rob} vs {ref}"] = {"top_ratio": g("top_ratio"), "tail_ratio": g("tail_ratio")}
print(json.dumps(out, indent=1))
