#!/usr/bin/env bash
# Seed sensitivity of the std model's FGSM / VAE-attack cells.
cd /work/main
M=".venv/bin/manifoldadv"
O=runs/mnist-extra
while [ ! -f $O/done ]; do sleep 5; done
$M train --data mnist --data-root /work/shared/data/mnist --mode std --seed 1 --device cpu --out $O/mnist-std-seed1.safetensors --force > $O/std-seed1.log 2>&1
$M attack $O/mnist-std-seed1.safetensors --attacks clean,fgsm,pgd,vae --cvae runs/mnist/mnist-cvae.safetensors --data-root /work/shared/data/mnist --seed 0 --device cpu --json > $O/std-seed1.json 2> $O/std-seed1-attack.log
echo done > $O/done2
