"""Glue shared by the commands: loading data and CVAEs."""

from __future__ import annotations

from pathlib import Path


from .. import checkpoint
from ..runtime import console
from ..data import load_dataset


def dataset(name, data_root, limit, download, seed=0):
    console.log(f"loading {name} ...")
    return load_dataset(name, data_root, limit=limit, download=download, seed=seed)


def load_cvae(path: Path, device, dataset_name: str | None = None):
    model, meta = checkpoint.load_model(path, kind="cvae", device=device, dataset=dataset_name)
    model.eval()
    return model, meta


def eigenbasis(ds, k: int | None, path: Path | None, device):
    """The class eigenbasis of `ds`'s training split (k None: the file's at `path`, else the data
    set's default)."""
    from ..evaluation import eigenbasis as eb

    if path is not None:
        from ..runtime import outputs

        if not Path(path).exists():
            outputs.check_file(path, "eigenbasis")
    return eb.obtain(ds.train, ds.num_classes, k, dataset=ds.name, path=path, device=device)


def checkpoints_dataset(paths) -> tuple[str, list[dict]]:
    """(the data set, each checkpoint's metadata) of classifier checkpoints that must share one."""
    from ..errors import UsageError

    metas = [checkpoint.load(p, kind="classifier").meta for p in paths]
    names = {m["dataset"] for m in metas}
    if len(names) > 1:
        raise UsageError(f"checkpoints come from different data sets: {', '.join(sorted(names))}")
    return (names.pop() if names else None), metas


def study(run, data: str, run_dir: Path, *, strategy, **options):
    """(Study, its data subset) for `reproduce` and `tradeoff`: the run's device (joining a
    torchrun group), seed and precision, the study's own options."""
    from ..study import Study

    s = Study(data, run_dir, run.start(), seed=run.seed, strategy=strategy, precision=run.precision,
              compile=run.compile, **options)
    return s, s.subset(dataset(data, run.data_root, run.limit, run.download))
