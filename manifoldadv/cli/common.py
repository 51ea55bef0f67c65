"""Glue shared by the commands: loading data and CVAEs."""

from __future__ import annotations

from pathlib import Path


from .. import checkpoint
from ..runtime import console
from ..data import load_dataset


def dataset(name, data_root, limit, download, seed=0):
    """The data set `name` (a built-in one, or npz:/folder:, canonical as Run.data_name gives it)."""
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
    from ..models import loading

    return loading.data_of(loading.parse(paths), None)


def classifiers(run, texts, data: str | None, weights=None, normalize=None):
    """(model references, the data set's name, each checkpoint's metadata or None) of a command's
    model arguments (checkpoints, factories, programs) and --data."""
    from ..models import loading

    refs = loading.parse(texts, weights=weights, normalize=normalize)
    name, metas = loading.data_of(refs, run.data_name(data))
    return refs, name, metas


def load_classifiers(refs, ds, device) -> list[tuple]:
    """Every model (model, record), each checked with one forward pass, before any work."""
    from ..models import loading

    return [loading.load(r, ds, device) for r in refs]


def study_data(run, data: str) -> str:
    """--data of `reproduce` and `tradeoff`: a built-in data set (the paper's tables are about them)."""
    from ..data import external
    from ..errors import UsageError

    if external.is_external(data):
        raise UsageError(f"the study (reproduce, tradeoff) reproduces the paper's tables on its data sets; with "
                         f"--data {data.split(':')[0]}:PATH use train, attack, audit, spectrum and profile")
    return run.data_name(data)


def study(run, data: str, run_dir: Path, *, strategy, **options):
    """(Study, its data subset) for `reproduce` and `tradeoff`: the run's device (joining a
    torchrun group), seed and precision, the study's own options."""
    from ..study import Study

    data = study_data(run, data)
    s = Study(data, run_dir, run.start(), seed=run.seed, strategy=strategy, precision=run.precision,
              compile=run.compile, **options)
    return s, s.subset(dataset(data, run.data_root, run.limit, run.download))
