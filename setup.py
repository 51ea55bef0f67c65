"""Builds manifoldadv._C: CPU kernels always, CUDA kernels when torch itself has CUDA.

Install with `pip install --no-build-isolation -e .` so the extension is compiled against the
torch already in the environment (build isolation would fetch a multi-GB CUDA torch).
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

# torch.utils.cpp_extension adds the C++ standard its headers need (C++20 for torch 2.13).
CXX_FLAGS = ["-O3", "-fopenmp"]


def _with_cuda() -> bool:
    # Gate on torch's build, not on a visible GPU: a GPU-less build box can still compile.
    if os.environ.get("MANIFOLDADV_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def extensions():
    sources = sorted(glob.glob("csrc/*.cpp"))
    if _with_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        return [
            CUDAExtension(
                "manifoldadv._C",
                sources,
                extra_compile_args={"cxx": CXX_FLAGS + ["-DMANIFOLDADV_WITH_CUDA"], "nvcc": ["-O3"]},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CppExtension(
            "manifoldadv._C", sources, extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=["-fopenmp"]
        )
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
