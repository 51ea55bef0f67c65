// Launch interface of the CUDA PGD-step kernels (pgd_step.cu). Pure CUDA runtime types only:
// no torch headers, so `make cuda-check` can compile pgd_step.cu with plain nvcc.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace manifoldadv::cuda {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };
enum class Norm : int { Linf = 0, L2 = 1, L1 = 2 };

// One step over `batch` samples of `n` contiguous coordinates (all four pointers of `dtype`).
// out may be x itself (in place) and x0 may alias x entirely: every thread writes out[i] only
// after its own last read of x[i], x0[i], g[i], and no thread reads another thread's i after
// the write phase has begun.
struct StepParams {
  const void* x;
  const void* x0;
  const void* g;
  void* out;
  int64_t batch;
  int64_t n;
  double step, eps, lo, hi;
  int64_t k;  // l1: SLIDE moves the k largest |g| (ties included)
  // l2, aligned samples of at most 1024 16-byte packs: keep them in registers (l2_regs_kernel)
  // instead of reading them twice; the same results up to the order of float64 additions.
  bool l2_in_registers = false;
};

// Enqueues the step on `stream`; returns the launch error (cudaSuccess if none).
// num_sms: multiprocessor count of the device (grid sizing of the elementwise linf kernel).
cudaError_t launch_pgd_step(const StepParams& p, DType dtype, Norm norm, int num_sms,
                            cudaStream_t stream);

}  // namespace manifoldadv::cuda
