// CUDA helpers of the per-class covariance update: pure CUDA behind the launchers of
// class_cov.h. Same algorithm as csrc/class_cov_cpu.cpp: exact float64 class means, a centred
// transposed float64 copy Yt = (X_c - mean)^T (+ Chan's correction column), then (in the glue,
// through cuBLAS) M2 += Yt Yt^T on upper-triangular row blocks; finalize mirrors the upper
// triangle and divides by n - 1.
#include <cstdint>

#include "class_cov.h"

namespace manifoldadv::cuda {
namespace {

template <typename T>
__global__ void column_sums_kernel(const T* X, int64_t d, const int64_t* rows, int64_t nb,
                                   int64_t rows_per_block, double* sums) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= d) return;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < nb ? r0 + rows_per_block : nb;
  double acc = 0.0;
  for (int64_t r = r0; r < r1; ++r) acc += static_cast<double>(X[rows[r] * d + j]);
  atomicAdd(sums + j, acc);
}

__global__ void divide_kernel(const double* sums, double* mean, int64_t d, double nb) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < d) mean[j] = sums[j] / nb;
}

// 32 x 32 tiles through shared memory: reads of X rows and writes of Yt rows both coalesce.
template <typename T>
__global__ void centred_transpose_kernel(const T* X, int64_t d, const int64_t* rows, int64_t nb,
                                         const double* mean, double* Yt, int64_t ld) {
  __shared__ double tile[32][33];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * 32;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * 32;
  const int tx = threadIdx.x, ty = threadIdx.y;  // blockDim = (32, 8)
  for (int k = ty; k < 32; k += 8) {
    const int64_t r = r0 + k, j = j0 + tx;
    if (r < nb && j < d) tile[k][tx] = static_cast<double>(X[rows[r] * d + j]) - mean[j];
  }
  __syncthreads();
  for (int k = ty; k < 32; k += 8) {
    const int64_t j = j0 + k, r = r0 + tx;
    if (r < nb && j < d) Yt[j * ld + r] = tile[tx][k];
  }
}

__global__ void chan_column_kernel(const double* mean, const double* old_mean, double w,
                                   double* Yt, int64_t d, int64_t ld, int64_t col) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < d) Yt[j * ld + col] = w * (mean[j] - old_mean[j]);
}

__global__ void mean_update_kernel(double* old_mean, const double* mean, int64_t d, double frac) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < d) old_mean[j] += (mean[j] - old_mean[j]) * frac;
}

__global__ void finalize_kernel(const double* m2, const int64_t* counts, double* out, int64_t C,
                                int64_t d) {
  const int64_t total = C * d * d;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += stride) {
    const int64_t c = t / (d * d), rem = t % (d * d), i = rem / d, j = rem % d;
    const double* m = m2 + c * d * d;
    const double v = j >= i ? m[i * d + j] : m[j * d + i];
    const int64_t n = counts[c];
    out[t] = n >= 2 ? v / (static_cast<double>(n) - 1.0) : __longlong_as_double(0x7ff8000000000000LL);
  }
}

unsigned int blocks_for(int64_t n, int64_t threads) {
  return static_cast<unsigned int>((n + threads - 1) / threads);
}

}  // namespace

cudaError_t launch_class_mean(const void* X, bool x_is_double, int64_t d, const int64_t* rows,
                              int64_t nb, double* sums, double* mean, cudaStream_t stream) {
  if (d <= 0 || nb <= 0) return cudaSuccess;
  cudaError_t err = cudaMemsetAsync(sums, 0, static_cast<size_t>(d) * sizeof(double), stream);
  if (err != cudaSuccess) return err;
  int64_t per_block = (nb + 65534) / 65535;  // grid.y <= 65535
  if (per_block < 64) per_block = 64;
  const dim3 grid(blocks_for(d, 128), blocks_for(nb, static_cast<int>(per_block)));
  if (x_is_double) {
    column_sums_kernel<double><<<grid, 128, 0, stream>>>(static_cast<const double*>(X), d, rows, nb, per_block, sums);
  } else {
    column_sums_kernel<float><<<grid, 128, 0, stream>>>(static_cast<const float*>(X), d, rows, nb, per_block, sums);
  }
  divide_kernel<<<blocks_for(d, 256), 256, 0, stream>>>(sums, mean, d, static_cast<double>(nb));
  return cudaGetLastError();
}

cudaError_t launch_centred_transpose(const void* X, bool x_is_double, int64_t d,
                                     const int64_t* rows, int64_t nb, const double* mean,
                                     const double* old_mean, double chan_w, double* Yt, int64_t ld,
                                     cudaStream_t stream) {
  if (d <= 0 || nb <= 0) return cudaSuccess;
  const dim3 grid(blocks_for(nb, 32), blocks_for(d, 32)), block(32, 8);
  if (grid.y > 65535u) return cudaErrorInvalidValue;
  if (x_is_double) {
    centred_transpose_kernel<double><<<grid, block, 0, stream>>>(static_cast<const double*>(X), d, rows, nb, mean, Yt, ld);
  } else {
    centred_transpose_kernel<float><<<grid, block, 0, stream>>>(static_cast<const float*>(X), d, rows, nb, mean, Yt, ld);
  }
  if (ld > nb) {
    chan_column_kernel<<<blocks_for(d, 256), 256, 0, stream>>>(mean, old_mean, chan_w, Yt, d, ld, nb);
  }
  return cudaGetLastError();
}

cudaError_t launch_mean_update(double* old_mean, const double* mean, int64_t d, double frac,
                               cudaStream_t stream) {
  if (d <= 0) return cudaSuccess;
  mean_update_kernel<<<blocks_for(d, 256), 256, 0, stream>>>(old_mean, mean, d, frac);
  return cudaGetLastError();
}

cudaError_t launch_cov_finalize(const double* m2, const int64_t* counts, double* out, int64_t C,
                                int64_t d, cudaStream_t stream) {
  const int64_t total = C * d * d;
  if (total <= 0) return cudaSuccess;
  int64_t blocks = (total + 255) / 256;
  if (blocks > 65536) blocks = 65536;
  finalize_kernel<<<static_cast<unsigned int>(blocks), 256, 0, stream>>>(m2, counts, out, C, d);
  return cudaGetLastError();
}

}  // namespace manifoldadv::cuda
