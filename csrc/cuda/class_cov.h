// Launch interface of the CUDA per-class covariance helpers (class_cov.cu). Pure CUDA runtime
// types only. The float64 products themselves go through cuBLAS (at::addmm_) in the torch glue
// class_cov_cuda.cpp; these kernels do the memory-bound parts around them.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace manifoldadv::cuda {

// Column means over the rows `rows[0..nb)` of X ([N, d] row-major, float32 or float64):
// mean[j] = sum_r X[rows[r], j] / nb, summed in float64. `sums` is float64 scratch of d values.
cudaError_t launch_class_mean(const void* X, bool x_is_double, int64_t d, const int64_t* rows,
                              int64_t nb, double* sums, double* mean, cudaStream_t stream);

// Yt[j, r] = X[rows[r], j] - mean[j] for j < d, r < nb (Yt is [d, ld] row-major, ld >= nb);
// if ld > nb, also Yt[j, nb] = chan_w * (mean[j] - old_mean[j]) (Chan's correction column).
cudaError_t launch_centred_transpose(const void* X, bool x_is_double, int64_t d,
                                     const int64_t* rows, int64_t nb, const double* mean,
                                     const double* old_mean, double chan_w, double* Yt, int64_t ld,
                                     cudaStream_t stream);

// old_mean += (mean - old_mean) * frac.
cudaError_t launch_mean_update(double* old_mean, const double* mean, int64_t d, double frac,
                               cudaStream_t stream);

// out[c] = sym(upper(m2[c])) / (counts[c] - 1), NaN where counts[c] < 2; C matrices of d x d.
cudaError_t launch_cov_finalize(const double* m2, const int64_t* counts, double* out, int64_t C,
                                int64_t d, cudaStream_t stream);

}  // namespace manifoldadv::cuda
