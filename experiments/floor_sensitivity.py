"""Spectrum summary of a finished `reproduce` run at other eigenvalue floors and top-k windows.

The study's summary uses one floor (1e-6 x the clean class's largest eigenvalue) and one window
(top 30); this shows how much the top and tail ratios depend on those two choices. It recomputes
manifoldadv.spectrum.summarize from the eigenvalues the run stored (RUN_DIR/results/spectra.json,
recorded as results/mnist-train-steps-5/spectra-eigenvalues.json): no data, no attack, seconds.

    python experiments/floor_sensitivity.py results/mnist-train-steps-5/spectra-eigenvalues.json \
        --out floor_sensitivity.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from manifoldadv.evaluation import spectrum

FLOORS = (1e-6, 1e-8, 1e-10, 1e-12)
TOPS = (5, 10, 30)


def as_set(s: dict) -> spectrum.SetSpectrum:
    ev = s["eigenvalues"]
    # the stored file keys classes by their string; a list (one entry per class) is read too
    classes = sorted(int(c) for c in ev) if isinstance(ev, dict) else range(len(ev))
    eig = {c: np.asarray(ev[str(c)] if isinstance(ev, dict) else ev[c]) for c in classes}
    return spectrum.SetSpectrum(s["name"], s["checkpoint"], s["attack"], np.asarray(s["counts"]), eig)


def numbers(text: str, kind):
    return tuple(kind(v) for v in text.split(",") if v.strip())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Geometric means over classes of spectrum.summarize's top/tail ratios, every robust set "
                    "against the clean one, at several floors and top-k windows, from stored eigenvalues.")
    p.add_argument("eigenvalues", type=Path,
                   help="the spectra step's cache of a reproduce run (RUN_DIR/results/spectra.json); "
                        "the first set in it is the clean one")
    p.add_argument("--sets", action="append", metavar="NAME",
                   help="a set to summarise, by its name in the file (repeat for more; default: every set "
                        "after the clean one)")
    p.add_argument("--floors", type=lambda t: numbers(t, float), default=FLOORS, metavar="F,F,...",
                   help="floors relative to the clean class's largest eigenvalue (default: 1e-6,1e-8,1e-10,1e-12)")
    p.add_argument("--tops", type=lambda t: numbers(t, int), default=TOPS, metavar="K,K,...",
                   help="top-k windows (default: 5,10,30)")
    p.add_argument("--out", type=Path, help="JSON file to write (default: stdout)")
    args = p.parse_args(argv)

    try:
        stored = json.loads(args.eigenvalues.read_text())["value"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        p.error(f"{args.eigenvalues}: not a stored spectra file ({exc})")
    sets = [as_set(s) for s in stored["sets"]]
    clean, robust = sets[0], sets[1:]
    if args.sets:
        by_name = {s.name: s for s in robust}
        unknown = [n for n in args.sets if n not in by_name]
        if unknown:
            p.error(f"no set {', '.join(map(repr, unknown))} in {args.eigenvalues}; it has "
                    f"{', '.join(repr(s.name) for s in robust)}")
        robust = [by_name[n] for n in args.sets]

    out = {"what": "geometric mean over the 10 classes of the per-class top/tail ratios (spectrum.summarize)",
           "rows": []}
    for floor in args.floors:
        for top in args.tops:
            for r in robust:
                rows = spectrum.summarize(clean, r, floor_rel=floor, top=top)
                g = lambda k: float(np.exp(np.mean([np.log(x[k]) for x in rows])))
                out["rows"].append({"floor_rel": floor, "top": top, "set": r.name,
                                    "top_ratio": g("top_ratio"), "tail_ratio": g("tail_ratio")})
    text = json.dumps(out, indent=1) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
