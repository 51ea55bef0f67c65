"""Data: the built-in data sets as arrays in [0, 1] (`datasets`) and their batches on the device
(`loader`)."""

from .datasets import (CIFAR_DIR, CIFAR_MEAN, CIFAR_STD, CIFAR_TEST, CIFAR_TRAIN, DATA_ENV, DATASETS,  # noqa: F401
                       MNIST_FILES, MNIST_MEAN, MNIST_STD, SOURCES, SYNTH_RANK, Dataset, Split, data_root,
                       load_cifar10, load_dataset, load_mnist, make_synthetic, read_cifar_batch, read_idx,
                       split_digest)
