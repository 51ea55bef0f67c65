// Argument rules shared by the CPU and CUDA backends of pgd_step / pgd_step_ (torch headers,
// host only). The device- and dtype-specific checks stay with each backend.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <string>

namespace manifoldadv {

// 0 = linf, 1 = l2, 2 = l1.
inline int parse_norm(c10::string_view norm) {
  if (norm == "linf") return 0;
  if (norm == "l2") return 1;
  if (norm == "l1") return 2;
  TORCH_CHECK(false, "manifoldadv::pgd_step: norm must be one of linf, l2, l1, got '",
              std::string(norm), "'");
}

// How many coordinates a SLIDE step moves: the same rule as manifoldadv.ops.l1_topk.
inline int64_t l1_topk(int64_t n, double q) {
  const auto drop = static_cast<int64_t>(std::floor(q * static_cast<double>(n) + 1e-6));
  return std::max<int64_t>(1, std::min<int64_t>(n, n - drop));
}

inline void check_step_common(const char* op, const at::Tensor& x, const at::Tensor& x0,
                              const at::Tensor& grad, double step, double eps, double lo,
                              double hi, double q) {
  TORCH_CHECK(x.sizes() == x0.sizes() && x.sizes() == grad.sizes(), op,
              ": x, x0 and grad must have one shape, got ", x.sizes(), ", ", x0.sizes(), ", ",
              grad.sizes());
  TORCH_CHECK(x.dim() >= 1, op, ": tensors need a batch dimension (dim 0)");
  TORCH_CHECK(std::isfinite(step) && step >= 0.0, op, ": step must be finite and >= 0, got ",
              step);
  TORCH_CHECK(eps >= 0.0, op, ": eps must be >= 0 (inf = no ball), got ", eps);
  TORCH_CHECK(lo <= hi, op, ": need lo <= hi (+-inf = no box), got lo=", lo, ", hi=", hi);
  TORCH_CHECK(q >= 0.0 && q < 1.0, op, ": l1_quantile must be in [0, 1), got ", q);
}

}  // namespace manifoldadv
