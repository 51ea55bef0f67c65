"""`manifoldadv train`: one loop for every mode (std, fgsm, pgd, l2, l1, joint-lp, vae, joint, cvae)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import checkpoint, training
from ..runtime import console, outputs
from ..attacks import graphed
from ._app import app
from ._options import DATA_OPTIONS, MODEL_OPTIONS, SyncBN, Data, DataName, Run, shared
from .common import dataset as load_data, load_cvae

Mode = Enum("Mode", {m: m for m in training.MODES}, type=str)


class Strategy(str, Enum):
    avg = "avg"
    max = "max"


def auto_cvae_path(out: Path, data_name: str) -> Path:
    return out.parent / f"{data_name}-cvae.safetensors"


def obtain_cvae(cvae: Path | None, out: Path, ds, device, seed: int, data_name: str, limit: int | None):
    """The CVAE a vae/joint mode needs: --cvae, else <run dir>/<data>-cvae.safetensors, trained
    there first on the same data (`limit` included) unless it is there already."""
    path = cvae or auto_cvae_path(out, data_name)
    if cvae is None:
        if not path.exists():
            console.log(f"no --cvae given and {path} does not exist: training a CVAE first")
        cfg = training.resolve_config(data_name, "cvae", seed=seed, limit=limit)
        if not training.ensure_trained(cfg, ds, device=device, out=path):
            console.log(f"using CVAE {path}")
    model, _ = load_cvae(path, device, data_name)
    return model, path


@app.command()
@shared(DATA_OPTIONS, MODEL_OPTIONS)
def train(
    run: Run,
    data: Data = DataName.synthetic,
    mode: Annotated[Mode, typer.Option("--mode", help="Training mode.")] = Mode["std"],
    model: Annotated[Optional[str], typer.Option("--model", help="Model name (default: the data set's; see README).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs (default: paper's).")] = None,
    adv_start: Annotated[Optional[int], typer.Option("--adv-start", min=0, help="First adversarial epoch (0-based count of clean epochs).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", min=0.0)] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", min=0.0)] = None,
    eps: Annotated[Optional[float], typer.Option("--eps", min=0.0, help="linf budget (fgsm, pgd, and the linf part of joint modes).")] = None,
    l1_eps: Annotated[Optional[float], typer.Option("--l1-eps", min=0.0)] = None,
    l2_eps: Annotated[Optional[float], typer.Option("--l2-eps", min=0.0)] = None,
    latent_eps: Annotated[Optional[float], typer.Option("--latent-eps", min=0.0, help="Latent FGSM budget (vae, joint).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="PGD steps of the regular training attacks.")] = None,
    step_size: Annotated[Optional[float], typer.Option("--step-size", min=0.0, help="PGD step (default 2.5*eps/steps).")] = None,
    strategy: Annotated[Strategy, typer.Option("--strategy", help="Joint modes: average the losses or take the per-example max.")] = Strategy.avg,
    clean_weight: Annotated[Optional[float], typer.Option("--clean-weight", min=0.0, max=0.999, help="Weight of the clean loss in adversarial epochs (default 0.5 for fgsm, else 0).")] = None,
    eps_warmup: Annotated[Optional[int], typer.Option("--eps-warmup", min=0, help="Adversarial epochs over which regular attacks' eps ramps up from 0 (default 2 on MNIST).")] = None,
    latent: Annotated[Optional[int], typer.Option("--latent", min=1, help="Latent size (mode cvae).")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Random crop + flip (default: on for cifar10).")] = None,
    cvae: Annotated[Optional[Path], typer.Option("--cvae", dir_okay=False, help="CVAE checkpoint for vae/joint modes.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", dir_okay=False, help="Checkpoint path (default runs/<data>-<mode>.safetensors).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint at --out.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing checkpoint at --out.")] = False,
    sync_bn: SyncBN = False,
    attack_graphs: Annotated[Optional[bool], typer.Option(
        "--attack-graphs/--no-attack-graphs",
        help="CUDA: replay each training attack's K steps as one CUDA graph (same results as eager). Default: off "
             "(experimental: not yet timed on a GPU, see bench/RESULTS.md).")] = None,
) -> None:
    """Train a classifier (or, with --mode cvae, the conditional VAE); checkpoint every epoch."""
    dev = run.start()
    data_name, mode_name = data.value, getattr(mode, "value", mode)
    out = out or training.default_out(data_name, mode_name)
    cfg = training.resolve_config(
        data_name, mode_name, model=model, epochs=epochs, adv_start=adv_start, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, budgets={"linf": eps, "l2": l2_eps, "l1": l1_eps, "latent": latent_eps}, steps=steps,
        step_size=step_size, strategy=strategy.value, clean_weight=clean_weight, eps_warmup=eps_warmup,
        augment=augment, latent=latent,
        seed=run.seed, limit=run.limit,
        cvae=str(cvae) if cvae else None, precision=run.precision.value,
    )
    training.check_out(out, resume=resume, force=force)  # before any work
    if attack_graphs:
        graphed.require(dev, mode_name)
    if training.needs_cvae(mode_name) and cvae is None:
        outputs.check_file(auto_cvae_path(out, data_name), "CVAE checkpoint")
    ds = load_data(data_name, run.data_root, run.limit, run.download)
    cvae_model = None
    if training.needs_cvae(mode_name):
        cvae_model, cvae_path = obtain_cvae(cvae, out, ds, dev, run.seed, data_name, run.limit)
        cfg.cvae, cfg.cvae_sha256 = str(cvae_path), checkpoint.digest(cvae_path)
    console.log(f"training {cfg.model} on {data_name} ({len(ds.train)} examples), mode {mode_name}, "
                f"{cfg.epochs} epochs -> {out}")
    meta = training.train(cfg, ds, device=dev, out=out, resume=resume, force=force, cvae=cvae_model, compile=run.compile,
                          sync_bn=sync_bn, attack_graphs=attack_graphs)
    summary = {"checkpoint": str(out), **{k: v for k, v in meta.items() if k not in ("optimizer",)}}
    if run.json_out:
        console.emit_json(summary)
        return
    last = meta["history"][-1] if meta.get("history") else {}
    if meta["kind"] == "classifier":
        console.out.print(f"{out}: {meta['model']} {mode_name}, epoch {meta['epoch']}/{meta['epochs']}, "
                          f"clean test accuracy {meta.get('clean_accuracy', float('nan')):.2%}")
    else:
        console.out.print(f"{out}: {meta['model']}, epoch {meta['epoch']}/{meta['epochs']}, test -ELBO "
                          f"{last.get('test_nelbo', float('nan')):.2f} nats, recon MSE {last.get('test_recon_mse', float('nan')):.5f}")
