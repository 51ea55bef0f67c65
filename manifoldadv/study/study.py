"""The paper's study as resumable steps over one run directory.

Layout of a run directory DIR:
  DIR/<data>-<mode>[-max].safetensors   checkpoints (the joint modes get `-max` with --strategy max)
  DIR/results/evals.json                 every (checkpoint, attack) accuracy measured so far
  DIR/results/<step>.json                finished steps (spectra, theory)
  DIR/figures/*.png, DIR/report.md, DIR/results.json

Every artefact is keyed by what made it: an evaluation by the checkpoint's SHA-256 and the
attack's settings, so re-running skips what is done and redoes what changed; a half-trained
model resumes from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime import accel, console, outputs
from .. import checkpoint, training
from ..attacks import external
from ..attacks import KINDS, kind, spec_for
from ..config import defaults
from ..runtime.outputs import atomic_write_text
from ..data import Dataset
from ..evaluation import attack_accuracy

TABLE1_ROWS = ("clean", "fgsm", "pgd", "vae")
TABLE1_COLS = ("std", "fgsm", "pgd", "vae", "joint")
LP_MODELS = ("l1", "pgd", "joint-lp")
# Table 2's rows -> the attack measured: the l1 row is per sample the worst of SLIDE and the
# gradient-free Pointwise attack, since l-inf training masks the l1 gradient (see pointwise.py)
LP_ATTACKS = {"l1": "l1-worst", "pgd": "pgd"}
GEN_MODELS, GEN_ATTACKS = ("pgd", "vae", "joint"), ("pgd", "vae")
ALL_MODES = ("std", "fgsm", "pgd", "vae", "joint", "l1", "joint-lp")
AUDIT_EXAMPLES = 1000  # of a full study; the audit's checks are coarse, a subset decides them
# AutoAttack beside the regular-attack rows (table -> row -> attack), when it is on
AUTOATTACK_ROWS = {"table1": {"autoattack": "autoattack"}, "lp": {"autoattack-l1": "autoattack-l1",
                   "autoattack": "autoattack"}, "gen": {"autoattack": "autoattack"}}


@dataclass
class Study:
    data: str
    run_dir: Path
    device: object
    seed: int = 0
    quick: bool = False
    strategy: str = "avg"
    eval_steps: int | None = None  # override of the attacks' steps (quick runs)
    train_steps: int | None = None  # override of the training attacks' PGD steps (CPU budget)
    precision: str = "fp32"  # of every classifier forward, training and evaluation (accel.py)
    compile: bool | None = None  # torch.compile the classifiers (None: the device's default)
    autoattack: bool | None = None  # AutoAttack rows (None: when pyautoattack is installed)
    audit: bool = True  # the audit of every trained model
    sync_bn: bool = False  # BatchNorm statistics over the whole batch with several processes
    timings: dict = field(default_factory=dict)
    spectra_test: object = None

    def __post_init__(self):
        if self.autoattack is None:
            self.autoattack = external.available()
            if not self.autoattack:
                console.log(f"no AutoAttack rows: pyautoattack is not installed ({external.EXTRA})")
        elif self.autoattack:
            external.require()
        self.run_dir = outputs.make_folder(self.run_dir, "run folder")
        outputs.make_folder(self.run_dir / "results", "run folder")
        outputs.make_folder(self.run_dir / "figures", "run folder")
        if self.quick and self.eval_steps is None:
            self.eval_steps = defaults(self.data).quick.steps

    # ---------------------------------------------------------------- data and models

    def subset(self, ds: Dataset) -> Dataset:
        # spectra need more rows per class than pixels, so they always use the whole test split
        self.spectra_test = ds.test
        if self.quick:
            q = defaults(self.data).quick
            ds.train, ds.test = ds.train.head(q.train), ds.test.head(q.test)
        return ds

    def path(self, mode: str) -> Path:
        suffix = "-max" if mode in ("joint", "joint-lp") and self.strategy == "max" else ""
        return self.run_dir / f"{self.data}-{mode}{suffix}.safetensors"

    def config(self, mode: str, ds: Dataset) -> training.TrainConfig:
        kw = {}
        if self.quick:
            q = defaults(self.data).quick
            kw = ({"epochs": q.cvae_epochs} if mode == "cvae" else
                  {"epochs": q.epochs, "adv_start": q.adv_start, "steps": q.steps})
            if mode != "cvae" and any(KINDS[a].space == "input" for a in training.MODES[mode]):
                kw["eps_warmup"] = 1  # of the quick runs' two adversarial epochs
        if self.train_steps is not None and mode != "cvae":
            kw["steps"] = self.train_steps
        limit = len(ds.train) if self.quick else None
        strategy = self.strategy if mode in ("joint", "joint-lp") else "avg"
        if mode != "cvae":
            kw["precision"] = self.precision
        cfg = training.resolve_config(self.data, mode, seed=self.seed, limit=limit, strategy=strategy, **kw)
        if training.needs_cvae(mode):
            cfg.cvae = str(self.path("cvae"))
            cfg.cvae_sha256 = checkpoint.digest(self.path("cvae"))
        return cfg

    def ensure_trained(self, mode: str, ds: Dataset) -> Path:
        """Train `mode` unless its checkpoint is complete; resume it when half-trained."""
        cvae = None
        if training.needs_cvae(mode):
            cvae, _ = checkpoint.load_model(self.ensure_trained("cvae", ds), kind="cvae", device=self.device)
        out, t0 = self.path(mode), time.perf_counter()
        if training.ensure_trained(self.config(mode, ds), ds, device=self.device, out=out, cvae=cvae,
                                   compile=None if mode == "cvae" else self.compile, sync_bn=self.sync_bn):
            self.timings[f"train:{mode}"] = round(time.perf_counter() - t0, 1)
        return out

    # ---------------------------------------------------------------- evaluations (cached)

    def _evals_path(self) -> Path:
        return self.run_dir / "results" / "evals.json"

    def _load_evals(self) -> dict:
        return outputs.read_cache(self._evals_path(), console.log) or {}

    def checked(self, split, *, full: int | None = None):
        """The test examples the costly evaluations use (AutoAttack, the audit): in quick runs the
        first `checked`, else the first `full` (None: all)."""
        return split.head(defaults(self.data).quick.checked if self.quick else full)

    def accuracy(self, mode: str, attack: str, ds: Dataset) -> dict:
        """Accuracy of the `mode` model under `attack` (cached by checkpoint hash and settings)."""
        if kind(attack).external:
            ds = dataclasses.replace(ds, test=self.checked(ds.test))
        ck = self.ensure_trained(mode, ds)
        spec = spec_for(attack, self.data, steps=self.eval_steps)
        # keys keep their old form where nothing new applies, so older caches stay valid: the
        # precision when not fp32, and the CVAE's digest for latent attacks (a replaced CVAE
        # must not reuse rows)
        # evaluation 2: each batch draws from a generator of its own (distributed.py)
        extra = [{"evaluation": 2}] + ([] if self.precision == "fp32" else [{"precision": self.precision}])
        if spec.space == "latent":
            extra.append({"cvae": checkpoint.digest(self.ensure_trained("cvae", ds))})
        key = json.dumps([ck.name, checkpoint.digest(ck), spec.as_dict(), len(ds.test), self.seed, *extra],
                         sort_keys=True)
        evals = self._load_evals()
        if key in evals:
            return evals[key]
        model, meta = checkpoint.load_model(ck, kind="classifier", device=self.device)
        compiled = accel.resolve_compile(self.compile, self.device, "eval")
        model = accel.prepare(model, precision=self.precision, compile=compiled, device=self.device)
        cvae = None
        if spec.space == "latent":
            cvae, _ = checkpoint.load_model(self.ensure_trained("cvae", ds), kind="cvae", device=self.device)
        t0 = time.perf_counter()
        with console.doing(f"while evaluating {mode} under {attack}"):
            res = attack_accuracy(model, ds.test, spec, device=self.device, cvae=cvae, seed=self.seed,
                                  label=f"{mode} / {attack}")
        row = {"checkpoint": str(ck), "mode": mode, "attack": attack, **spec.as_dict(), **res,
               **accel.record(self.precision, compiled), "seconds": round(time.perf_counter() - t0, 1)}
        evals = self._load_evals()  # re-read: keep whatever else finished meanwhile
        evals[key] = row
        atomic_write_text(self._evals_path(), json.dumps(evals, indent=1))
        console.log(f"[{self.data}] {mode} under {attack}: {res['accuracy']:.2%}")
        return row

    def matrix(self, rows, cols, ds: Dataset) -> dict:
        return {a: {m: self.accuracy(m, a, ds)["accuracy"] for m in cols} for a in rows}

    def table1(self, ds: Dataset) -> dict:
        rows = TABLE1_ROWS + (tuple(AUTOATTACK_ROWS["table1"]) if self.autoattack else ())
        return self.matrix(rows, TABLE1_COLS, ds)

    # ---------------------------------------------------------------- the audit (cached)

    def audits(self, ds: Dataset) -> dict:
        """mode -> the audit's checks of every trained classifier (cached by checkpoint and settings)."""
        from ..evaluation.audit import audit

        out, path = {}, self.run_dir / "results" / "audit.json"
        test = self.checked(ds.test, full=AUDIT_EXAMPLES)
        for mode in ALL_MODES:
            ck = self.ensure_trained(mode, ds)
            key = json.dumps([ck.name, checkpoint.digest(ck), checkpoint.digest(self.path("cvae")), len(test),
                              self.eval_steps, self.seed, self.precision])
            cache = outputs.read_cache(path, console.log) or {}
            if key not in cache:
                model, _ = checkpoint.load_model(ck, kind="classifier", device=self.device, dataset=self.data)
                model = accel.prepare(model, precision=self.precision, device=self.device)
                cvae, _ = checkpoint.load_model(self.ensure_trained("cvae", ds), kind="cvae", device=self.device)
                with console.doing(f"while auditing {mode}"):
                    checks = audit(model, test, self.data, device=self.device, steps=self.eval_steps, seed=self.seed,
                                   cvae=cvae, num_classes=ds.num_classes)
                cache = outputs.read_cache(path, console.log) or {}
                cache[key] = [c.as_dict() for c in checks]
                atomic_write_text(path, json.dumps(console.to_jsonable(cache), indent=1))
                console.log(f"[{self.data}] audit of {mode}: {sum(c.verdict == 'FAIL' for c in checks)} failed")
            out[mode] = cache[key]
        return out

    # ---------------------------------------------------------------- the trade-off

    def tradeoff(self, ds: Dataset) -> dict:
        """Both halves of Table 2 and the drops of each joint model against its single models."""
        rows = {row: {m: self.accuracy(m, a, ds) for m in LP_MODELS} for row, a in LP_ATTACKS.items()}
        lp = {row: {m: r["accuracy"] for m, r in cols.items()} for row, cols in rows.items()}
        # SLIDE alone comes with the l1-worst evaluation (rows cached before it did: run `l1`)
        slide = {m: r["slide_accuracy"] if "slide_accuracy" in r else self.accuracy(m, "l1", ds)["accuracy"]
                 for m, r in rows["l1"].items()}
        gen = self.matrix(GEN_ATTACKS, GEN_MODELS, ds)
        if self.autoattack:  # beside the rows the drops are computed from
            lp.update(self.matrix(AUTOATTACK_ROWS["lp"], LP_MODELS, ds))
            gen.update(self.matrix(AUTOATTACK_ROWS["gen"], GEN_MODELS, ds))
        drop_lp = {"l1": lp["l1"]["l1"] - lp["l1"]["joint-lp"], "pgd": lp["pgd"]["pgd"] - lp["pgd"]["joint-lp"]}
        drop_gen = {"pgd": gen["pgd"]["pgd"] - gen["pgd"]["joint"], "vae": gen["vae"]["vae"] - gen["vae"]["joint"]}
        return {
            "strategy": self.strategy,
            "lp": lp,
            "lp_attacks": dict(LP_ATTACKS),
            "l1_slide_only": slide,
            "gen": gen,
            "drops": {
                "joint-lp": {**drop_lp, "mean": sum(drop_lp.values()) / 2},
                "joint": {**drop_gen, "mean": sum(drop_gen.values()) / 2},
            },
        }
