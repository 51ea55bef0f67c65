// Kernel bodies of the CPU backend, compiled once per CPU capability.
//
// csrc/cpu_kernels_default.cpp and csrc/cpu_kernels_avx2.cpp both include pgd_step_kernel.h;
// setup.py compiles the second with -mavx2 -mfma (CPU_CAPABILITY_AVX2), so at::vec::Vectorized
// is 8 floats of AVX2 there and the portable generic vector elsewhere. csrc/pgd_step_cpu.cpp
// picks a table at run time from at::get_cpu_capability() (which honours ATEN_CPU_CAPABILITY),
// the same rule torch uses for its own kernels. These files hold no torch Tensor code and no
// static initialisers; the orchestration (checks, allocation, at::parallel_for) lives in the
// operator files, compiled for the baseline ISA.
#pragma once

#include <cstdint>

namespace manifoldadv::cpu {

enum class Norm : int { Linf = 0, L2 = 1, L1 = 2 };

// One PGD step over `batch` samples of `n` contiguous float32 coordinates each.
// out may alias x (the in-place op) or x0 / g entirely; every kernel writes out[i] only after
// its last read of x[i], x0[i] and g[i].
struct StepArgs {
  const float* x;
  const float* x0;
  const float* g;
  float* out;
  int64_t batch;
  int64_t n;
  double step, eps, lo, hi;
  int64_t k;  // l1: SLIDE moves the k largest |g| (ties at the threshold included)
  // linf / l2: write out with non-temporal stores (a fresh output larger than the caches:
  // skips reading every output line before overwriting it). Never set when out aliases x.
  bool stream_out = false;
};

// Per-sample sums of the l2 read pass, accumulated in float64.
struct L2Sums {
  double gg = 0.0;  // ||g||^2 (non-finite entries of g count as zero)
  double dg = 0.0;  // <x - x0, g>
  double dd = 0.0;  // ||x - x0||^2; non-finite iff some x or x0 is (or x - x0 overflows)
};

struct Kernels {
  const char* name;
  // linf over the flat element range [begin, end) of all samples.
  void (*linf)(const StepArgs&, int64_t begin, int64_t end);
  // l2 read pass over coordinates [c0, c1) of sample b.
  L2Sums (*l2_sums)(const StepArgs&, int64_t b, int64_t c0, int64_t c1);
  // l2 write pass: out = clamp(x0 + (x + step*g*inv_gn - x0) * scale, lo, hi), or NaN.
  void (*l2_write)(const StepArgs&, int64_t b, int64_t c0, int64_t c1, float inv_gn, float scale,
                   bool nan);
  // l1 (SLIDE step + exact projection) for samples [b0, b1).
  void (*l1)(const StepArgs&, int64_t b0, int64_t b1);
};

namespace DEFAULT {
const Kernels& kernels();
}
#if defined(MANIFOLDADV_HAVE_AVX2)
namespace AVX2 {
const Kernels& kernels();
}
#endif

}  // namespace manifoldadv::cpu
