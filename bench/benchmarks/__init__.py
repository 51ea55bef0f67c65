"""The benchmark functions behind the two bench drivers: bench/run.py (`make bench`, CPU) and
bench/gpu_check.py (`make gpu-check`, a CUDA machine, or `--dry-run` on CPU).

  common   timing (round-robin on the host, CUDA events on a GPU), commands, small formatting
  kernels  pgd_step, threading and per-class covariance timings; one attack step
  attack   whole attacks on the fused engine, the eager path and torchattacks; training with
           the engine on and off
  train    training epochs of the new loop against the old one (bench/legacy_loop.py), and
           epochs under torchrun
  report   each driver's tables and targets

kernels and train import torch and manifoldadv when they load, so a driver imports them only
after it has set its thread counts (run.py) or built the extension (gpu_check.py); common and
report import neither.
"""
