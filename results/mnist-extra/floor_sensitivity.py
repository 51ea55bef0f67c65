"""Spectrum summary of the MNIST run at other floors and top-k windows (issue 5's claim vs the
floor): recomputed with manifoldadv.spectrum.summarize from the eigenvalues the reproduce run
stored, no new attack. Run from the repository root:
    .venv/bin/python results/mnist-extra/floor_sensitivity.py > results/mnist-extra/floor_sensitivity.json
"""
import json

import numpy as np

from manifoldadv import spectrum

stored = json.load(open("results/mnist-train-steps-5/spectra-eigenvalues.json"))["value"]


def as_set(s):
    ev = s["eigenvalues"]
    classes = sorted(int(c) for c in ev) if isinstance(ev, dict) else range(len(ev))
    eig = {c: np.asarray(ev[str(c)] if isinstance(ev, dict) else ev[c]) for c in classes}
    return spectrum.SetSpectrum(s["name"], s["checkpoint"], s["attack"], np.asarray(s["counts"]), eig)


sets = [as_set(s) for s in stored["sets"]]
clean, robust = sets[0], sets[1:]
out = {"what": "geometric mean over the 10 classes of the per-class top/tail ratios (spectrum.summarize)",
       "rows": []}
for floor in (1e-6, 1e-8, 1e-10, 1e-12):
    for top in (5, 10, 30):
        for r in robust:
            rows = spectrum.summarize(clean, r, floor_rel=floor, top=top)
            g = lambda k: float(np.exp(np.mean([np.log(x[k]) for x in rows])))
            out["rows"].append({"floor_rel": floor, "top": top, "set": r.name,
                                "top_ratio": g("top_ratio"), "tail_ratio": g("tail_ratio")})
print(json.dumps(out, indent=1))
