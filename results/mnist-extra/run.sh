#!/usr/bin/env bash
# Extra MNIST measurements behind the closing note (deviations from the paper).
cd /work/main
M=".venv/bin/manifoldadv"
D="--data-root /work/shared/data/mnist --seed 0 --device cpu --json"
O=runs/mnist-extra
$M attack runs/mnist/mnist-std.safetensors runs/mnist/mnist-pgd.safetensors --attacks clean,fgsm,pgd $D > $O/pgd40-epoch24.json 2> $O/pgd40-epoch24.log
$M attack runs/mnist-fast/mnist-pgd.safetensors runs/mnist-fast/mnist-l1.safetensors runs/mnist-fast/mnist-joint-lp.safetensors --attacks l1 --limit 2000 $D > $O/l1-default-2000.json 2> $O/l1-default.log
$M attack runs/mnist-fast/mnist-pgd.safetensors runs/mnist-fast/mnist-l1.safetensors runs/mnist-fast/mnist-joint-lp.safetensors --attacks l1 --steps 200 --restarts 3 --limit 2000 $D > $O/l1-strong-2000.json 2> $O/l1-strong.log
$M attack runs/mnist/mnist-std.safetensors runs/mnist-fast/mnist-fgsm.safetensors runs/mnist-fast/mnist-pgd.safetensors runs/mnist/mnist-vae.safetensors --attacks vae,vae-pgd --cvae runs/mnist/mnist-cvae.safetensors $D > $O/latent.json 2> $O/latent.log
echo done > $O/done
