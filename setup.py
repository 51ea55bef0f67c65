"""Builds manifoldadv._C: CPU kernels always, CUDA kernels when torch itself has CUDA.

Install with `pip install --no-build-isolation -e .` so the extension is compiled against the
torch already in the environment (build isolation would fetch a multi-GB CUDA torch).

CPU kernels are compiled twice: csrc/cpu_kernels_default.cpp for the baseline ISA and
csrc/cpu_kernels_avx2.cpp with -mavx2 -mfma (x86-64 only); the operator picks one at run time
from torch's own CPU capability detection, so the library still loads and runs on CPUs without
AVX2.
"""

import glob
import os
import platform

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

# torch.utils.cpp_extension adds the C++ standard its headers need (C++20 for torch 2.13).
CXX_FLAGS = ["-O3", "-fopenmp", "-Wno-unknown-pragmas"]
AVX2_FLAGS = ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")


def _with_cuda() -> bool:
    # Gate on torch's build, not on a visible GPU: a GPU-less build box can still compile.
    if os.environ.get("MANIFOLDADV_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


class Build(BuildExtension):
    """BuildExtension that compiles `*_avx2.cpp` sources alone with AVX2 flags.

    They are compiled before the rest and linked last, so that the linker keeps the baseline
    copies of any inline function the two kinds of object share.
    """

    def build_extension(self, ext):
        avx2 = [s for s in ext.sources if s.endswith("_avx2.cpp")]
        ext.sources = [s for s in ext.sources if s not in avx2]
        if avx2 and IS_X86_64:
            args = ext.extra_compile_args
            cxx = list(args["cxx"] if isinstance(args, dict) else args)
            objects = self.compiler.compile(
                avx2,
                output_dir=os.path.join(self.build_temp, "avx2"),
                macros=ext.define_macros,
                include_dirs=ext.include_dirs,
                debug=self.debug,
                extra_postargs=cxx + AVX2_FLAGS,
                depends=ext.depends,
            )
            ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


def extensions():
    sources = sorted(glob.glob("csrc/*.cpp"))
    # setuptools rebuilds only when a listed source or dependency is newer than the library.
    depends = sorted(glob.glob("csrc/*.h") + glob.glob("csrc/cuda/*.h") + glob.glob("csrc/cuda/*.cuh"))
    depends += [s for s in sources if s.endswith("_avx2.cpp")]
    macros = [("MANIFOLDADV_HAVE_AVX2", None)] if IS_X86_64 else []
    if not IS_X86_64:
        sources = [s for s in sources if not s.endswith("_avx2.cpp")]
    if _with_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        return [
            CUDAExtension(
                "manifoldadv._C",
                sources,
                depends=depends,
                define_macros=macros,
                include_dirs=[os.path.abspath("csrc"), os.path.abspath("csrc/cuda")],
                extra_compile_args={
                    "cxx": CXX_FLAGS + ["-DMANIFOLDADV_WITH_CUDA"],
                    "nvcc": ["-O3"],
                },
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CppExtension(
            "manifoldadv._C",
            sources,
            depends=depends,
            define_macros=macros,
            include_dirs=[os.path.abspath("csrc")],
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": Build.with_options(use_ninja=True)})
