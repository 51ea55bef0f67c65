"""The paper's study as resumable steps over one run directory.

Layout of a run directory DIR:
  DIR/<checkpoint name of each mode>     checkpoints (modes.py names them)
  DIR/results/evals.json                 every (checkpoint, attack) accuracy measured so far
  DIR/results/<step>.json                finished steps (audit, spectra, theory)
  DIR/figures/*.png, DIR/report.md, DIR/results.json

Every artefact is keyed by what made it (`outputs.cache_key`): an evaluation by the
checkpoint's SHA-256 and the attack's settings, so re-running skips what is done and redoes what
changed; a half-trained model resumes from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import checkpoint, models, training
from ..attacks import external, kind, needs, spec_for
from ..config import defaults, latent_eps
from ..data import Dataset
from ..errors import UsageError
from ..evaluation import attack_accuracy
from ..runtime import accel, console, outputs
from ..runtime.outputs import Cache, cache_key
from ..training import CVAE, mode as mode_kind
from . import seeds, tables

TABLE1_ROWS = ("clean", "fgsm", "pgd", "vae", "eigen")
TABLE1_COLS = ("std", "fgsm", "pgd", "vae", "joint", "eigen")
ALL_MODES = ("std", "fgsm", "pgd", "vae", "joint", "l1", "joint-lp", "eigen", "joint-eigen")
CHECKED = 1000  # test examples of AutoAttack and the audit in a full study without --full-checks
# AutoAttack beside the regular-attack rows (table -> row -> attack), when it is on
AUTOATTACK_ROWS = {"table1": {"autoattack": "autoattack"}, "lp": {"autoattack-l1": "autoattack-l1",
                   "autoattack": "autoattack"}, "gen": {"autoattack": "autoattack"},
                   "eigen": {"autoattack": "autoattack"}}
# left out of --quick runs: on the l1-robust models AutoAttack-l1 took about half of `make demo`
QUICK_SKIPS = ("autoattack-l1",)


@dataclass
class Study:
    data: str
    run_dir: Path
    device: object
    seed: int = 0
    generator: str | None = None  # the CVAE kind the latent attacks use (None: the data set's)
    eval_seeds: tuple = ()  # every cell of a random attack measured with each (default: (seed,))
    train_seeds: tuple = ()  # more training seeds of `seeded_modes`: replicates in run_dir/seeds/seed-N
    seeded_modes: tuple = ("std", "vae")
    quick: bool = False
    strategy: str = "avg"
    eval_steps: int | None = None  # override of the attacks' steps (quick runs)
    train_steps: int | None = None  # override of the training attacks' PGD steps (CPU budget)
    precision: str = "fp32"  # of every classifier forward, training and evaluation (accel.py)
    compile: bool | None = None  # torch.compile the classifiers (None: the device's default)
    autoattack: bool | None = None  # AutoAttack rows (None: when pyautoattack is installed)
    audit: bool = True  # the audit of every trained model
    full_checks: bool | None = None  # AutoAttack and the audit on every test example (None: on CUDA)
    sync_bn: bool = False  # BatchNorm statistics over the whole batch with several processes
    timings: dict = field(default_factory=dict)  # what this invocation spent, by step
    step_seconds: dict = field(default_factory=dict)  # what the cached steps it used cost when made
    caches: dict = field(default_factory=dict)
    budgets: dict = field(init=False, default_factory=dict)  # the latent budget for the generator
    cells: dict = field(init=False, default_factory=dict)  # (attack, mode) -> seeds.summarize of its samples
    replicas: dict = field(init=False, default_factory=dict)  # training seed -> its Study
    spectra_test: object = None
    eigenbasis: object = None  # the class eigenbasis of the training split (basis())

    def __post_init__(self):
        if self.autoattack is None:
            self.autoattack = external.available()
            if not self.autoattack:
                console.log(f"no AutoAttack rows: pyautoattack is not installed ({external.EXTRA})")
        elif self.autoattack:
            external.require()
        if self.full_checks is None:
            self.full_checks = str(self.device).startswith("cuda")
        # checked now, made by the first file written into them: a run that fails before it has
        # anything to keep leaves nothing behind
        self.run_dir = outputs.check_folder(self.run_dir, "run folder")
        for sub in ("results", "figures"):
            outputs.check_folder(self.run_dir / sub, "run folder")
        if self.quick and self.eval_steps is None:
            self.eval_steps = defaults(self.data).quick.steps
        self.generator = self.generator or defaults(self.data).cvae.model
        self.eval_seeds, self.train_seeds = tuple(self.eval_seeds), tuple(self.train_seeds)
        unknown = set(self.seeded_modes) - set(ALL_MODES)
        if unknown:
            raise UsageError(f"unknown mode(s) {', '.join(sorted(unknown))} for training seeds; choose from "
                             f"{', '.join(ALL_MODES)}")
        gen = training.resolve_config(self.data, CVAE, model=self.generator)  # refuses a non-generator here
        # every latent attack and latent-trained model of the study: the budget sized to its latent
        self.budgets = {"latent": latent_eps(self.data, gen.model_kwargs["latent"])}

    # ---------------------------------------------------------------- data and models

    def subset(self, ds: Dataset) -> Dataset:
        # spectra need more rows per class than pixels, so they always use the whole test split
        self.spectra_test = ds.test
        if self.quick:
            q = defaults(self.data).quick
            ds.train, ds.test = ds.train.head(q.train), ds.test.head(q.test)
        return ds

    def path(self, mode: str) -> Path:
        if mode_kind(mode).generator and self.generator != defaults(self.data).cvae.model:
            return self.run_dir / f"{self.data}-{self.generator}.safetensors"
        return self.run_dir / mode_kind(mode).checkpoint_name(self.data, self.strategy)

    def config(self, mode: str, ds: Dataset) -> training.TrainConfig:
        m, kw = mode_kind(mode), {}
        if m.generator:
            kw["model"] = self.generator
        if self.quick:
            q = defaults(self.data).quick
            if not m.generator:
                kw.update(epochs=q.epochs, adv_start=q.adv_start, steps=q.steps)
            elif not models.spec(self.generator).closed_form:
                kw["epochs"] = q.cvae_epochs
            if m.regular:
                kw["eps_warmup"] = 1  # of the quick runs' two adversarial epochs
        if m.needs_cvae:
            kw["budgets"] = self.budgets
        if not m.generator:
            if self.train_steps is not None:
                kw["steps"] = self.train_steps
            kw["precision"] = self.precision
        if m.needs_basis:
            kw["eigen_k"] = self.basis(ds).k
        limit = len(ds.train) if self.quick else None
        cfg = training.resolve_config(self.data, mode, seed=self.seed, limit=limit, strategy=self.strategy, **kw)
        if m.needs_cvae:
            cfg = cfg.with_cvae(self.path(CVAE), checkpoint.digest(self.path(CVAE)))
        if m.needs_basis:
            cfg = cfg.with_basis(self.basis(ds))
        return cfg

    def basis(self, ds: Dataset):
        """The class eigenbasis of the training split, kept in the run folder: the data set's k, or
        less when a class of a subset is too small for it (logged; results.json records k)."""
        if self.eigenbasis is None:
            from ..evaluation import eigenbasis

            k = defaults(self.data).eigen.k
            smallest = int(ds.train.y.bincount(minlength=ds.num_classes).min())
            if smallest <= k:
                console.log(f"eigenspace k {max(smallest - 1, 1)} instead of {k}: the training split's smallest class "
                            f"has {smallest} examples")
                k = max(smallest - 1, 1)
            self.eigenbasis = eigenbasis.obtain(ds.train, ds.num_classes, k, dataset=self.data, cache_dir=self.run_dir,
                                                device=self.device)
        return self.eigenbasis

    def ensure_trained(self, mode: str, ds: Dataset) -> Path:
        """Train `mode` unless its checkpoint is complete; resume it when half-trained."""
        m, cvae = mode_kind(mode), None
        if m.needs_cvae:
            cvae, _ = checkpoint.load_model(self.ensure_trained(CVAE, ds), kind="cvae", device=self.device)
        out, t0 = self.path(mode), time.perf_counter()
        if training.ensure_trained(self.config(mode, ds), ds, device=self.device, out=out, cvae=cvae,
                                   basis=self.basis(ds) if m.needs_basis else None,
                                   compile=None if m.generator else self.compile, sync_bn=self.sync_bn):
            self.timings[f"train:{mode}"] = round(time.perf_counter() - t0, 1)
        return out

    # ---------------------------------------------------------------- evaluations (cached)

    def cache(self, name: str) -> Cache:
        """results/<name>.json (one object per file, so that an old one is reported once)."""
        if name not in self.caches:
            self.caches[name] = Cache(self.run_dir / "results" / f"{name}.json", console.log)
        return self.caches[name]

    def checked(self, split):
        """The test examples the costly evaluations use (AutoAttack, the audit): the first
        `quick.checked` of a quick run, the first CHECKED of a full one, all with --full-checks."""
        if self.quick:
            return split.head(defaults(self.data).quick.checked)
        return split if self.full_checks else split.head(CHECKED)

    def autoattack_rows(self, table: str) -> tuple:
        """The AutoAttack rows of `table` this run evaluates (a quick run leaves out QUICK_SKIPS)."""
        return tuple(a for a in AUTOATTACK_ROWS[table] if not (self.quick and a in QUICK_SKIPS))

    # ---------------------------------------------------------------- seeds

    def seeds(self) -> tuple:
        """The evaluation seeds (the first one is the study's own unless --seeds says otherwise)."""
        return self.eval_seeds or (self.seed,)

    def replicate(self, seed: int) -> "Study":
        """The study trained with another seed, in run_dir/seeds/seed-N (its own generator too)."""
        if seed == self.seed:
            return self
        if seed not in self.replicas:
            self.replicas[seed] = dataclasses.replace(
                self, seed=seed, run_dir=self.run_dir / "seeds" / f"seed-{seed}", train_seeds=(), timings={},
                step_seconds={}, caches={}, eigenbasis=self.eigenbasis)
        return self.replicas[seed]

    def replicates(self, mode: str) -> list["Study"]:
        """This study, then each training-seed replicate of `mode` (when it is one of seeded_modes)."""
        extra = self.train_seeds if mode in self.seeded_modes else ()
        return [self] + [self.replicate(s) for s in extra if s != self.seed]

    def cell(self, mode: str, attack: str, ds: Dataset) -> dict:
        """The (attack, mode) cell over every training replicate and, for a random attack, every
        evaluation seed (seeds.summarize); kept in self.cells."""
        random = spec_for(attack, self.data, steps=self.eval_steps, budgets=self.budgets).random
        evals = self.seeds() if random else self.seeds()[:1]
        samples = [(rep.seed, e, rep.accuracy(mode, attack, ds, seed=e)["accuracy"])
                   for rep in self.replicates(mode) for e in evals]
        self.cells[(attack, mode)] = cell = seeds.summarize(samples)
        return cell

    def accuracy(self, mode: str, attack: str, ds: Dataset, seed: int | None = None) -> dict:
        """Accuracy of the `mode` model under `attack` with evaluation seed `seed` (default: the
        study's), cached by checkpoint hash and settings."""
        seed = self.seed if seed is None else seed
        if kind(attack).external:
            ds = dataclasses.replace(ds, test=self.checked(ds.test))
        ck = self.ensure_trained(mode, ds)
        spec = spec_for(attack, self.data, steps=self.eval_steps, budgets=self.budgets)
        cvae_path = self.ensure_trained(CVAE, ds) if "cvae" in needs(attack) else None
        basis = self.basis(ds) if "basis" in needs(attack) else None
        key = cache_key({"checkpoint": ck.name, "sha256": checkpoint.digest(ck), "attack": spec.as_dict(),
                         "n_test": len(ds.test), "seed": seed, "precision": self.precision,
                         "cvae": checkpoint.digest(cvae_path) if cvae_path else None,
                         **({"eigenbasis": [basis.digest, basis.k]} if basis is not None else {})})
        evals = self.cache("evals")
        row = evals.get(key)
        if row is not None:
            return row
        model, meta = checkpoint.load_model(ck, kind="classifier", device=self.device)
        compiled = accel.resolve_compile(self.compile, self.device, "eval")
        model = accel.prepare(model, precision=self.precision, compile=compiled, device=self.device)
        cvae = checkpoint.load_model(cvae_path, kind="cvae", device=self.device)[0] if cvae_path else None
        t0 = time.perf_counter()
        with console.doing(f"while evaluating {mode} under {attack}"):
            res = attack_accuracy(model, ds.test, spec, device=self.device, cvae=cvae, basis=basis, seed=seed,
                                  label=f"{mode} / {attack}")
        row = {"checkpoint": str(ck), "mode": mode, "attack": attack, "train_seed": self.seed, "eval_seed": seed,
               **spec.as_dict(), **res,
               **({"eigenbasis": basis.describe()} if basis is not None else {}),
               **accel.record(self.precision, compiled), "seconds": round(time.perf_counter() - t0, 1)}
        evals.put(key, row)
        console.log(f"[{self.data}] {mode} under {attack}: {res['accuracy']:.2%}"
                    + (f" (training seed {self.seed}, evaluation seed {seed})" if self.train_seeds or self.eval_seeds
                       or self.replicas else ""))
        return row

    def matrix(self, rows, cols, ds: Dataset) -> dict:
        """attack -> mode -> the cell's mean (a single accuracy without seeds); the cells in self.cells."""
        return {a: {m: self.cell(m, a, ds)["mean"] for m in cols} for a in rows}

    def table1(self, ds: Dataset) -> dict:
        rows = TABLE1_ROWS + (self.autoattack_rows("table1") if self.autoattack else ())
        return self.matrix(rows, TABLE1_COLS, ds)

    # ---------------------------------------------------------------- the audit (cached)

    def audits(self, ds: Dataset) -> dict:
        """mode -> the audit's checks of every trained classifier (cached by checkpoint and settings)."""
        from ..evaluation.audit import Auditor, audit

        out, cache, test = {}, self.cache("audit"), self.checked(ds.test)
        cvae_path = self.ensure_trained(CVAE, ds)
        cvae_sha256 = checkpoint.digest(cvae_path)
        basis = self.basis(ds)
        for mode in ALL_MODES:
            ck = self.ensure_trained(mode, ds)
            key = cache_key({"checkpoint": ck.name, "sha256": checkpoint.digest(ck),
                             "cvae": cvae_sha256, "eigenbasis": [basis.digest, basis.k], "n_test": len(test),
                             "steps": self.eval_steps, "checks": len(Auditor.CHECKS),
                             "seed": self.seed, "precision": self.precision})
            checks = cache.get(key)
            if checks is None:
                model, _ = checkpoint.load_model(ck, kind="classifier", device=self.device, dataset=self.data)
                model = accel.prepare(model, precision=self.precision, device=self.device)
                cvae, _ = checkpoint.load_model(cvae_path, kind="cvae", device=self.device)
                with console.doing(f"while auditing {mode}"):
                    found = audit(model, test, self.data, device=self.device, steps=self.eval_steps, seed=self.seed,
                                  cvae=cvae, num_classes=ds.num_classes, basis=basis)
                checks = console.to_jsonable([c.as_dict() for c in found])
                cache.put(key, checks)
                console.log(f"[{self.data}] audit of {mode}: {sum(c.verdict == 'FAIL' for c in found)} failed")
            out[mode] = checks
        return out

    # ---------------------------------------------------------------- the trade-off

    def tradeoff(self, ds: Dataset) -> dict:
        """Every half of Table 2 (tables.TABLE2) and the drops of each joint model against its single models."""
        half = tables.TABLE2["lp"]
        lp = {row: {m: self.cell(m, a, ds)["mean"] for m in half.models} for row, a in half.attacks.items()}
        # SLIDE alone, from the study's own l1-worst evaluation
        slide = {m: self.accuracy(m, half.attacks["l1"], ds)["slide_accuracy"] for m in half.models}
        if self.autoattack:  # beside the rows the drops are computed from
            lp.update(self.matrix(self.autoattack_rows("lp"), half.models, ds))
        out = {"strategy": self.strategy, "lp": lp, "lp_attacks": dict(half.attacks), "l1_slide_only": slide}
        for key, other in tables.TABLE2.items():
            if key == "lp":
                continue
            out[key] = self.matrix(tuple(other.attacks.values()), other.models, ds)
            if self.autoattack:
                out[key].update(self.matrix(self.autoattack_rows(key), other.models, ds))
        out["drops"] = tables.drops(out)
        return out
