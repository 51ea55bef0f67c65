"""Option aliases shared by every command (Annotated, so each command declares them in one line)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..accel import PRECISIONS


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DataName(str, Enum):
    synthetic = "synthetic"
    mnist = "mnist"
    cifar10 = "cifar10"


Json = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout; logs go to stderr.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; results are deterministic for a seed on CPU.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to run.", case_sensitive=False)]
Data = Annotated[DataName, typer.Option("--data", help="Data set.", case_sensitive=False)]
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
                 help="torch.compile the classifier (default: on with CUDA, off on CPU, where it was slower)."),
]
