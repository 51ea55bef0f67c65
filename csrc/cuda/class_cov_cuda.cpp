// CUDA backend of manifoldadv::class_cov_update_ / class_cov_finalize: torch glue around the
// pure-CUDA helpers of class_cov.cu; the float64 products go through cuBLAS via at::addmm_ on
// upper-triangular row blocks (the same scheme as csrc/class_cov_cpu.cpp). Compiled only when
// torch has CUDA.
#include <ATen/core/Tensor.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "class_cov.h"

namespace manifoldadv::cuda {
namespace {

void check_state(const char* op, const at::Tensor& counts, const at::Tensor& m2) {
  TORCH_CHECK(counts.is_cuda() && m2.device() == counts.device(), op,
              ": the CUDA kernel needs counts and m2 on one CUDA device");
  TORCH_CHECK(counts.dim() == 1 && counts.scalar_type() == at::kLong, op,
              ": counts must be a 1-D int64 tensor [C], got ", counts.scalar_type(), " ",
              counts.sizes());
  TORCH_CHECK(m2.dim() == 3 && m2.scalar_type() == at::kDouble && m2.size(0) == counts.size(0) &&
                  m2.size(1) == m2.size(2),
              op, ": m2 must be a float64 tensor [C, d, d] with C = ", counts.size(0), ", got ",
              m2.scalar_type(), " ", m2.sizes());
}

void class_cov_update_cuda(at::Tensor& counts, at::Tensor& means, at::Tensor& m2,
                           const at::Tensor& features, const at::Tensor& labels) {
  const char* op = "manifoldadv::class_cov_update_";
  check_state(op, counts, m2);
  const int64_t C = counts.size(0), d = m2.size(1);
  TORCH_CHECK(means.device() == counts.device() && means.dim() == 2 &&
                  means.scalar_type() == at::kDouble && means.size(0) == C && means.size(1) == d,
              op, ": means must be a float64 tensor [C, d] on the device of counts");
  TORCH_CHECK(counts.is_contiguous() && means.is_contiguous() && m2.is_contiguous(), op,
              ": counts, means and m2 must be contiguous (they are updated in place)");
  TORCH_CHECK(features.device() == counts.device() && labels.device() == counts.device(), op,
              ": features and labels must be on the device of the state");
  TORCH_CHECK(features.dim() == 2 && features.size(1) == d, op,
              ": features must be [N, d] with d = ", d, ", got ", features.sizes());
  TORCH_CHECK(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble, op,
              ": features must be float32 or float64, got ", features.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.scalar_type() == at::kLong &&
                  labels.size(0) == features.size(0),
              op, ": labels must be int64 [N] with N = ", features.size(0));
  const int64_t N = features.size(0);
  if (N == 0 || d == 0) return;
  const c10::cuda::CUDAGuard guard(counts.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(counts.get_device()).stream();

  const at::Tensor X = features.contiguous(), L = labels.contiguous();
  // Per-class row counts on the host (also validates the label range).
  const int64_t lmin = L.min().item<int64_t>(), lmax = L.max().item<int64_t>();
  TORCH_CHECK(lmin >= 0 && lmax < C, op, ": labels must be in [0, ", C, "), got range [", lmin,
              ", ", lmax, "]");
  const at::Tensor order = at::argsort(L, /*stable=*/true);
  const at::Tensor per_class = at::bincount(L, {}, C).cpu();
  at::Tensor host_counts = counts.cpu();
  const int64_t* nbs = per_class.const_data_ptr<int64_t>();
  int64_t* cnt = host_counts.mutable_data_ptr<int64_t>();

  const int64_t max_rows = std::max<int64_t>(1024, (int64_t{1} << 25) / d);
  int64_t widest = 0;
  for (int64_t c = 0; c < C; ++c) widest = std::max(widest, std::min(max_rows, nbs[c]));
  const auto dopt = m2.options();
  at::Tensor buf = at::empty({d * (widest + 1)}, dopt);
  at::Tensor sums = at::empty({d}, dopt), mb = at::empty({d}, dopt);
  const bool is_double = X.scalar_type() == at::kDouble;
  const int64_t* rows_all = order.const_data_ptr<int64_t>();
  const int64_t bs = d <= 1024 ? 128 : 256;

  int64_t start = 0;
  for (int64_t c = 0; c < C; ++c) {
    at::Tensor m2c = m2.select(0, c);
    double* mean_c = means.mutable_data_ptr<double>() + c * d;
    for (int64_t r0 = start; r0 < start + nbs[c]; r0 += max_rows) {
      const int64_t nb = std::min(max_rows, start + nbs[c] - r0);
      const int64_t na = cnt[c], n = na + nb;
      const int64_t ld = nb + (na > 0 ? 1 : 0);
      const double w = std::sqrt(static_cast<double>(na) * static_cast<double>(nb) /
                                 static_cast<double>(n));
      C10_CUDA_CHECK(launch_class_mean(X.const_data_ptr(), is_double, d, rows_all + r0, nb,
                                       sums.mutable_data_ptr<double>(),
                                       mb.mutable_data_ptr<double>(), stream));
      at::Tensor Yt = buf.as_strided({d, ld}, {ld, 1});
      C10_CUDA_CHECK(launch_centred_transpose(X.const_data_ptr(), is_double, d, rows_all + r0, nb,
                                              mb.const_data_ptr<double>(), mean_c, w,
                                              Yt.mutable_data_ptr<double>(), ld, stream));
      for (int64_t i0 = 0; i0 < d; i0 += bs) {
        const int64_t h = std::min(bs, d - i0);
        at::Tensor out = m2c.narrow(0, i0, h).narrow(1, i0, d - i0);
        // beta = 0 for the class's first chunk: its M2 block is not read (see ops.py)
        out.addmm_(Yt.narrow(0, i0, h), Yt.narrow(0, i0, d - i0).t(), na > 0 ? 1.0 : 0.0, 1.0);
      }
      C10_CUDA_CHECK(launch_mean_update(mean_c, mb.const_data_ptr<double>(), d,
                                        static_cast<double>(nb) / static_cast<double>(n), stream));
      cnt[c] = n;
    }
    start += nbs[c];
  }
  counts.copy_(host_counts);
}

at::Tensor class_cov_finalize_cuda(const at::Tensor& counts, const at::Tensor& m2) {
  check_state("manifoldadv::class_cov_finalize", counts, m2);
  const c10::cuda::CUDAGuard guard(counts.device());
  const at::Tensor M = m2.contiguous(), K = counts.contiguous();
  at::Tensor out = at::empty(M.sizes(), M.options());
  C10_CUDA_CHECK(launch_cov_finalize(M.const_data_ptr<double>(), K.const_data_ptr<int64_t>(),
                                     out.mutable_data_ptr<double>(), M.size(0), M.size(1),
                                     c10::cuda::getCurrentCUDAStream(counts.get_device()).stream()));
  return out;
}

}  // namespace
}  // namespace manifoldadv::cuda

TORCH_LIBRARY_IMPL(manifoldadv, CUDA, m) {
  m.impl("class_cov_update_", &manifoldadv::cuda::class_cov_update_cuda);
  m.impl("class_cov_finalize", &manifoldadv::cuda::class_cov_finalize_cuda);
}
