"""Option aliases shared by every command (Annotated, so each command declares them in one line)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import models
from ..data import DATASETS
from ..runtime.accel import PRECISIONS
from ..training import MODES, STRATEGIES


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# choices follow the registries; commands receive the plain values (see `shared`)
DataName = Enum("DataName", {name: name for name in DATASETS}, type=str)
ModeName = Enum("ModeName", {m: m for m in MODES}, type=str)
StrategyName = Enum("StrategyName", {s: s for s in STRATEGIES}, type=str)
GeneratorName = Enum("GeneratorName", {g: g for g in models.available("cvae")}, type=str)


Checkpoints = Annotated[list[str], typer.Argument(
    help="Classifiers: checkpoints (.safetensors), factories package.module:function (weights from --weights) or "
         "torch.export programs (.pt2).", show_default=False)]
Weights = Annotated[Optional[list[Path]], typer.Option(
    "--weights", dir_okay=False, help="Safetensors weights of a factory (its state dict, keys matched strictly, or a "
                                      "manifoldadv checkpoint of it); one per factory, in order.")]
Normalize = Annotated[Optional[str], typer.Option(
    "--normalize", metavar="MEAN,STD",
    help="Wrap factories and programs whose normalisation is outside the model: x -> (x - MEAN) / STD, two numbers "
         "or one mean per channel then one std per channel. Images stay in [0, 1].")]
Json = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout; logs go to stderr.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; results are deterministic for a seed on CPU.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to run.", case_sensitive=False)]
DATA_HELP = (f"Data set: {', '.join(DATASETS)}, npz:PATH (arrays x_train, y_train, x_test, y_test) or folder:PATH "
             f"(train/<class>/*.png|jpg and test/<class>/...).")
Data = Annotated[str, typer.Option("--data", help=DATA_HELP)]
DataFor = Annotated[Optional[str], typer.Option("--data", help=DATA_HELP + " Default: the checkpoints'; a factory or "
                                                                          "a program needs it.")]
Resize = Annotated[Optional[str], typer.Option("--resize", metavar="H,W", help="folder: data: resize every image to H,W (bilinear); without it they must share one size.")]
DataRoot = Annotated[
    Optional[Path],
    typer.Option(
        "--data-root",
        help="Folder with the data files (default: $MANIFOLDADV_DATA, else ~/.cache/manifoldadv).",
        file_okay=False,
    ),
]
Limit = Annotated[
    Optional[int], typer.Option("--limit", min=1, help="Use only the first N training and N test examples.")
]
Download = Annotated[bool, typer.Option("--download", help="Fetch missing data files (needs torchvision).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines on stderr.")]

PrecisionName = Enum("PrecisionName", {p: p for p in PRECISIONS}, type=str)
Precision = Annotated[
    PrecisionName,
    typer.Option("--precision", case_sensitive=False,
                 help="Classifier forwards in fp32, or under bf16 autocast; perturbations, their gradients "
                      "and the steps stay fp32."),
]
Compile = Annotated[
    Optional[bool],
    typer.Option("--compile/--no-compile",
                 help="torch.compile the classifier (default: on for training on CUDA; off for evaluation, where "
                      "compiling takes longer than it saves, and on CPU, where compiled code was slower)."),
]


Mode = Annotated[ModeName, typer.Option("--mode", help="Training mode.")]
Strategy = Annotated[StrategyName, typer.Option("--strategy", help="Joint modes: average their attacks' losses or take the per-example max.")]
Generator = Annotated[Optional[GeneratorName], typer.Option(
    "--generator", help="The generator (CVAE kind) of the latent attacks and of VAE-adv and joint training (default: "
                        "the data set's, cvae-mlp on MNIST); its latent budget is the data set's scaled by "
                        "sqrt(that CVAE's latent / this one's), the same l2 step in the latent.")]
FullChecks = Annotated[Optional[bool], typer.Option(
    "--full-checks/--subset-checks",
    help="AutoAttack and the audit on every test example, or on the first 1000 (the same ones for every model; "
         "the report says how many). Default: every example on CUDA, the subset on CPU; quick runs use a small subset.")]
EigenK = Annotated[Optional[int], typer.Option(
    "--k", min=1, help="Eigenspace attacks: each class's top-k covariance eigenvectors span its manifold "
                       "(default: the --basis file's, else the data set's: 100 on MNIST).")]
EigenEps = Annotated[Optional[float], typer.Option(
    "--eigen-eps", min=0.0, help="l2 budget of eigen and eigen-off-l2, on and off the manifold at the same norm "
                                 "(default: the data set's, 1 on MNIST).")]
BasisFile = Annotated[Optional[Path], typer.Option(
    "--basis", dir_okay=False, help="Eigenbasis file: read when it exists (it must be of this training split and "
                                    "k), else computed and written there (default: a cache under $MANIFOLDADV_CACHE "
                                    "or ~/.cache/manifoldadv).")]
SyncBN = Annotated[bool, typer.Option("--sync-bn", help="With several processes (torchrun), BatchNorm statistics over the whole batch rather than each process's part.")]

# ------------------------------------------------------------------ options every command shares

# name -> (annotated type, default), in the order `--help` lists them after a command's own
RUN_OPTIONS = {"json_out": (Json, False), "seed": (Seed, 0), "device": (DeviceOpt, Device.auto), "quiet": (Quiet, False)}
DATA_OPTIONS = {"data_root": (DataRoot, None), "limit": (Limit, None), "download": (Download, False),
                "resize": (Resize, None)}
MODEL_OPTIONS = {"precision": (Precision, PrecisionName.fp32), "compile": (Compile, None)}


class Run:
    """The shared options of one invocation (see `shared`), as attributes."""

    def __init__(self, **options):
        self.precision = "fp32"
        self.compile = self.data_root = self.limit = self.resize = None
        self.download = False
        self.__dict__.update(options)

    def data_name(self, text: str | None) -> str | None:
        """--data as the name results record: a built-in set, or npz:/folder: with its path resolved
        (and a folder's --resize)."""
        from ..data import external
        from ..errors import UsageError

        if text is None:
            if self.resize is not None:
                raise UsageError("--resize applies to folder: data sets (--data folder:PATH)")
            return None
        if external.is_external(text):
            return external.canonical(text, external.parse_resize(self.resize))
        if text.lower() not in DATASETS:
            raise UsageError(f"unknown data set {text!r} for --data; choose one of {', '.join(DATASETS)}, npz:PATH or folder:PATH")
        if self.resize is not None:
            raise UsageError("--resize applies to folder: data sets (--data folder:PATH)")
        return text.lower()

    def start(self):
        """Apply --quiet and --seed, resolve --device and, under torchrun, join the process group
        (this rank's device); returns the torch device."""
        from ..runtime import distributed
        from ..runtime.console import only_rank_zero_speaks, set_quiet
        from ..runtime import resolve_device, seed_everything

        set_quiet(self.quiet)
        seed_everything(self.seed)
        device = distributed.start(resolve_device(self.device))
        only_rank_zero_speaks(distributed.is_main())
        return device


def plain(value):
    """A choice as its plain value: the library never sees a Typer enum."""
    return value.value if isinstance(value, Enum) else value


def shared(*groups: dict, base: dict = RUN_OPTIONS, options: type = None, defaults: dict | None = None):
    """A command `fn(run: Run, **own_options)` with the options of `base` and `groups` appended
    to its own: Typer sees one signature, the function gets them gathered in `run` (an `options`
    instance, Run by default) and every choice as its plain value. defaults: per-command defaults
    of shared options."""
    import inspect

    extra = {k: v for g in (base, *groups) for k, v in g.items()}
    extra = {k: (a, (defaults or {}).get(k, d)) for k, (a, d) in extra.items()}
    cls = options or Run

    def wrap(fn):
        own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]
        params = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d)
                  for k, (a, d) in extra.items()]

        def command(**kw):
            kw = {k: plain(v) for k, v in kw.items()}
            return fn(cls(**{k: kw.pop(k) for k in extra}), **kw)

        command.__name__, command.__doc__, command.__module__ = fn.__name__, fn.__doc__, fn.__module__
        command.__signature__ = inspect.Signature(own + params)
        return command
    return wrap
