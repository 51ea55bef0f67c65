"""`manifoldadv train`: one loop for every mode (the modes: `training.MODES`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import config, training
from ..attacks import graphed
from ..runtime import console, outputs
from ._app import app
from ._options import (DATA_OPTIONS, MODEL_OPTIONS, BasisFile, Data, EigenEps, EigenK, Mode, ModeName, Run,
                       Strategy, StrategyName, SyncBN, shared)
from .common import dataset as load_data


@app.command()
@shared(DATA_OPTIONS, MODEL_OPTIONS)
def train(
    run: Run,
    data: Data = "synthetic",
    mode: Mode = ModeName.std,
    model: Annotated[Optional[str], typer.Option("--model", help="Model name, or a factory package.module:function (default: the data set's; see README).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs (default: paper's).")] = None,
    adv_start: Annotated[Optional[int], typer.Option("--adv-start", min=0, help="First adversarial epoch (0-based count of clean epochs).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", min=0.0)] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", min=0.0)] = None,
    eps: Annotated[Optional[float], typer.Option("--eps", min=0.0, help="linf budget (fgsm, pgd, and the linf part of joint modes).")] = None,
    l1_eps: Annotated[Optional[float], typer.Option("--l1-eps", min=0.0)] = None,
    l2_eps: Annotated[Optional[float], typer.Option("--l2-eps", min=0.0)] = None,
    latent_eps: Annotated[Optional[float], typer.Option("--latent-eps", min=0.0, help="Latent FGSM budget (vae, joint).")] = None,
    eigen_eps: EigenEps = None,
    k: EigenK = None,
    basis: BasisFile = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="PGD steps of the regular training attacks.")] = None,
    step_size: Annotated[Optional[float], typer.Option("--step-size", min=0.0, help="PGD step (default 2.5*eps/steps).")] = None,
    strategy: Strategy = StrategyName.avg,
    clean_weight: Annotated[Optional[float], typer.Option("--clean-weight", min=0.0, max=0.999, help="Weight of the clean loss in adversarial epochs (default 0.5 for fgsm, else 0).")] = None,
    eps_warmup: Annotated[Optional[int], typer.Option("--eps-warmup", min=0, help="Adversarial epochs over which regular attacks' eps ramps up from 0 (default 2 on MNIST).")] = None,
    latent: Annotated[Optional[int], typer.Option("--latent", min=1, help="Latent size (mode cvae).")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Random crop + flip (default: on for cifar10).")] = None,
    cvae: Annotated[Optional[Path], typer.Option("--cvae", dir_okay=False, help="CVAE checkpoint for vae/joint modes.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", dir_okay=False, help="Checkpoint path (default runs/<data>-<mode>[-max].safetensors, as the study names it).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint at --out.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing checkpoint at --out.")] = False,
    sync_bn: SyncBN = False,
    attack_graphs: Annotated[Optional[bool], typer.Option(
        "--attack-graphs/--no-attack-graphs",
        help="CUDA: replay each training attack's K steps as one CUDA graph (same results as eager). Default: off "
             "(experimental, see docs/gpu.md).")] = None,
) -> None:
    """Train a classifier (or, with --mode cvae, the conditional VAE); checkpoint every epoch.

    --model takes a registered model or a factory package.module:function (called with in_shape and
    num_classes when it takes them). Data from outside has no default budgets: give the eps of
    each attack the mode trains with (--eps, --l2-eps, --l1-eps, --latent-eps, --eigen-eps).

    Example: manifoldadv train --data npz:mydata.npz --mode pgd --eps 0.1 --model mymodels:small_cnn
    """
    dev = run.start()
    data = run.data_name(data)

    def resolve(latent_budget):
        return training.resolve_config(
            data, mode, model=model, epochs=epochs, adv_start=adv_start, batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, steps=steps, step_size=step_size, strategy=strategy, clean_weight=clean_weight,
            budgets={"linf": eps, "l2": l2_eps, "l1": l1_eps, "latent": latent_budget, "eigen": eigen_eps},
            eps_warmup=eps_warmup, augment=augment, latent=latent, seed=run.seed, limit=run.limit,
            precision=run.precision, eigen_k=k)

    cfg = resolve(latent_eps)
    out = training.check_out(out or cfg.checkpoint_path(), resume=resume, force=force)  # before any work
    if attack_graphs:
        graphed.require(dev, cfg.kind)
    if cfg.kind.needs_cvae and cvae is None:
        outputs.check_file(training.default_cvae_path(cfg, out), "CVAE checkpoint")
    ds = load_data(data, run.data_root, run.limit, run.download)
    cfg, cvae_model = training.with_cvae(cfg, ds, device=dev, out=out, cvae=cvae)
    if cvae_model is not None and latent_eps is None:  # the budget sized to this generator's latent
        cfg = resolve(config.latent_eps(data, cvae_model.latent)).with_cvae(cfg.cvae, cfg.cvae_sha256)
    cfg, basis_model = training.with_basis(cfg, ds, out=out, path=basis, device=dev)
    console.log(f"training {cfg.model} on {data} ({len(ds.train)} examples), mode {mode}, {cfg.epochs} epochs -> {out}")
    meta = training.train(cfg, ds, device=dev, out=out, resume=resume, force=force, cvae=cvae_model, basis=basis_model,
                          compile=run.compile,
                          sync_bn=sync_bn, attack_graphs=attack_graphs)
    summary = {"checkpoint": str(out), **{k: v for k, v in meta.items() if k not in ("optimizer",)}}
    if run.json_out:
        console.emit_json(summary)
        return
    last = meta["history"][-1] if meta.get("history") else {}
    if meta["kind"] == "classifier":
        console.out.print(f"{out}: {meta['model']} {mode}, epoch {meta['epoch']}/{meta['epochs']}, "
                          f"clean test accuracy {meta.get('clean_accuracy', float('nan')):.2%}")
    else:
        console.out.print(f"{out}: {meta['model']}, epoch {meta['epoch']}/{meta['epochs']}, test -ELBO "
                          f"{last.get('test_nelbo', float('nan')):.2f} nats, recon MSE {last.get('test_recon_mse', float('nan')):.5f}")
