"""Extra MNIST measurements beside the study (results/mnist-extra): the manifoldadv commands, in order.

Steps (each writes OUT/NAME.json and its log OUT/NAME.log; std-seed1's training logs to
OUT/std-seed1-train.log):
  pgd40-epoch24    std and the PGD-40-trained PGD-adv model (the paper's training attack; the study
                   trains with PGD-5) under clean / FGSM / PGD-40
  l1-default-2000  l1-adv, l-inf-adv, joint-lp of the study under SLIDE (l1 PGD) at its defaults, 2000 images
  l1-strong-2000   the same under SLIDE with 200 steps and 3 restarts
  latent           std and VAE-adv (paper run), FGSM-adv and PGD-adv (study) under the latent FGSM and
                   latent PGD, through the paper run's CVAE
  std-seed1        a second std model (seed 1) trained into --train-dir, then clean / FGSM / PGD / VAE attacks:
                   how much the std model's FGSM and VAE cells move with the training seed

Two folders of checkpoints are read: --run-dir, the study run with PGD-5 in adversarial training
(`manifoldadv reproduce --data mnist --train-steps 5 --run-dir RUN_DIR`), and --paper-run-dir, the
models trained at the paper's settings (PGD-40 in training; the std, VAE-adv and CVAE models do not
depend on the training attack's steps). Attacks run with seed 0 on the CPU unless told otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from manifoldadv.training import mode as mode_kind

STEPS = ("pgd40-epoch24", "l1-default-2000", "l1-strong-2000", "latent", "std-seed1")


def commands(args) -> dict[str, list[tuple[list[str], Path | None, Path]]]:
    """Per step, its manifoldadv invocations: (arguments, JSON file for stdout or None, log file)."""
    run, paper, out = args.run_dir, args.paper_run_dir, args.out
    data = ["--data-root", str(args.data_root)] if args.data_root is not None else []
    common = [*data, "--seed", str(args.seed), "--device", args.device, "--json"]
    def ck(folder, mode):  # the study's checkpoint of `mode`
        return folder / mode_kind(mode).checkpoint_name("mnist")

    pgd40 = args.pgd40 if args.pgd40 is not None else ck(paper, "pgd")
    cvae = ck(paper, "cvae")
    lp = [ck(run, m) for m in ("pgd", "l1", "joint-lp")]
    seed1 = args.train_dir / "mnist-std-seed1.safetensors"

    def attack(name, checkpoints, *options):
        return (["attack", *map(str, checkpoints), *options, *common], out / f"{name}.json", out / f"{name}.log")

    return {
        "pgd40-epoch24": [attack("pgd40-epoch24", [ck(paper, "std"), pgd40], "--attacks", "clean,fgsm,pgd")],
        "l1-default-2000": [attack("l1-default-2000", lp, "--attacks", "l1", "--limit", "2000")],
        "l1-strong-2000": [attack("l1-strong-2000", lp, "--attacks", "l1", "--steps", "200", "--restarts", "3",
                                  "--limit", "2000")],
        "latent": [attack("latent", [ck(paper, "std"), ck(run, "fgsm"), ck(run, "pgd"), ck(paper, "vae")],
                          "--attacks", "vae,vae-pgd", "--cvae", str(cvae))],
        # --resume: a re-run continues an interrupted training (bit-identical) instead of starting over
        "std-seed1": [(["train", "--data", "mnist", *data, "--mode", "std", "--seed", "1", "--device", args.device,
                        "--out", str(seed1), "--resume"], None, out / "std-seed1-train.log"),
                      attack("std-seed1", [seed1], "--attacks", "clean,fgsm,pgd,vae", "--cvae", str(cvae))],
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, required=True,
                   help="the --train-steps 5 study's folder: mnist-fgsm, mnist-pgd, mnist-l1, mnist-joint-lp")
    p.add_argument("--paper-run-dir", type=Path, required=True,
                   help="the paper-settings models: mnist-std, mnist-pgd (PGD-40-trained), mnist-vae, mnist-cvae")
    p.add_argument("--pgd40", type=Path,
                   help="the PGD-40-trained checkpoint for pgd40-epoch24 (default: PAPER_RUN_DIR/mnist-pgd.safetensors; "
                        "the recorded run used it after 24 of its 30 epochs)")
    p.add_argument("--data-root", type=Path,
                   help="folder with the MNIST files (default: $MANIFOLDADV_DATA, else ~/.cache/manifoldadv)")
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON results and logs")
    p.add_argument("--train-dir", type=Path,
                   help="where std-seed1 trains mnist-std-seed1.safetensors (default: --out)")
    p.add_argument("--steps", default=",".join(STEPS), metavar="STEP,...",
                   help=f"which steps, run in this order (default: all: {','.join(STEPS)})")
    p.add_argument("--seed", type=int, default=0, help="attack seed (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu, where the recorded runs were made)")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = p.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        p.error(f"unknown step {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    if args.train_dir is None:
        args.train_dir = args.out
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    todo = commands(args)
    manifoldadv = [sys.executable, "-m", "manifoldadv"]  # the manifoldadv of this interpreter's environment
    if not args.dry_run:
        args.out.mkdir(parents=True, exist_ok=True)
        args.train_dir.mkdir(parents=True, exist_ok=True)
    for step in args.steps:
        for argv_, result, log in todo[step]:
            print(f"[{step}] manifoldadv {' '.join(argv_)}" + (f" > {result} 2> {log}" if result else f" > {log} 2>&1"),
                  flush=True)
            if args.dry_run:
                continue
            # the JSON goes to a side file first, so a failed run leaves an earlier result in place
            partial = result.with_name(result.name + ".partial") if result else None
            with open(log, "w") as err:
                if partial:
                    with open(partial, "w") as so:
                        rc = subprocess.run([*manifoldadv, *argv_], stdout=so, stderr=err).returncode
                else:  # training: its lines and the log together, like `> LOG 2>&1`
                    rc = subprocess.run([*manifoldadv, *argv_], stdout=err, stderr=subprocess.STDOUT).returncode
            if rc != 0:  # later steps may need this one (std-seed1's attack needs its training)
                print(f"[{step}] failed with exit code {rc}; see {log}", file=sys.stderr)
                return rc
            if partial:
                partial.replace(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
