// CPU backend of manifoldadv::pgd_step / pgd_step_: argument checks, allocation, threading
// (at::parallel_for) and the choice of kernel table per CPU capability. The loops themselves are
// in pgd_step_kernel.h.
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Version.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu_kernels.h"
#include "op_common.h"

namespace manifoldadv::cpu {
namespace {

const Kernels& pick_kernels() {
#if defined(MANIFOLDADV_HAVE_AVX2)
  // torch's capability ("DEFAULT", "AVX2", "AVX512"; lowered by ATEN_CPU_CAPABILITY), and the
  // CPU's own word on AVX2 + FMA in case torch ever reports a capability that lacks FMA.
  const std::string cap = at::get_cpu_capability();
  if ((cap == "AVX2" || cap == "AVX512") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma")) {
    return AVX2::kernels();
  }
#endif
  return DEFAULT::kernels();
}

}  // namespace

const Kernels& active_kernels() {
  static const Kernels& k = pick_kernels();
  return k;
}

namespace {

void check_step_args(const char* op, const at::Tensor& x, const at::Tensor& x0,
                     const at::Tensor& grad, double step, double eps, double lo, double hi,
                     double q) {
  TORCH_CHECK(x.device().is_cpu() && x0.device().is_cpu() && grad.device().is_cpu(), op,
              ": the CPU kernel needs x, x0 and grad on the CPU, got ", x.device(), ", ",
              x0.device(), ", ", grad.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat && x0.scalar_type() == at::kFloat &&
                  grad.scalar_type() == at::kFloat,
              op, ": the CPU kernel takes float32 x, x0 and grad, got ", x.scalar_type(), ", ",
              x0.scalar_type(), ", ", grad.scalar_type(),
              " (manifoldadv.ops.pgd_step upcasts other dtypes to float32)");
  check_step_common(op, x, x0, grad, step, eps, lo, hi, q);
}

// A fresh output at least this large is written with non-temporal stores (linf, l2).
constexpr int64_t kStreamBytes = int64_t{4} << 20;

// Work below this many coordinates stays on one thread.
constexpr int64_t kGrainElems = 32768;

void run_step(StepArgs a, Norm norm) {
  if (a.batch == 0 || a.n == 0) return;
  const Kernels& K = active_kernels();
  const int64_t B = a.batch, n = a.n;
  switch (norm) {
    case Norm::Linf: {
      at::parallel_for(0, B * n, kGrainElems,
                       [&](int64_t begin, int64_t end) { K.linf(a, begin, end); });
      return;
    }
    case Norm::L2: {
      const int64_t threads = at::get_num_threads();
      if (B >= 2 * threads || n < 4 * kGrainElems) {
        // One task per sample: the write pass re-reads the sample from cache.
        at::parallel_for(0, B, std::max<int64_t>(1, kGrainElems / n), [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            float inv_gn, scale;
            bool nan;
            l2_factors(K.l2_sums(a, b, 0, n), a.step, a.eps, inv_gn, scale, nan);
            K.l2_write(a, b, 0, n, inv_gn, scale, nan);
          }
        });
      } else {
        // Few long samples: split each into chunks, reduce the sums, then write.
        const int64_t chunk = 4 * kGrainElems;
        const int64_t nc = (n + chunk - 1) / chunk;
        std::vector<L2Sums> part(static_cast<size_t>(B * nc));
        at::parallel_for(0, B * nc, 1, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t b = t / nc, c = t % nc;
            part[t] = K.l2_sums(a, b, c * chunk, std::min(n, (c + 1) * chunk));
          }
        });
        std::vector<float> inv_gn(B), scale(B);
        std::vector<char> nan(B);
        for (int64_t b = 0; b < B; ++b) {
          L2Sums s;
          for (int64_t c = 0; c < nc; ++c) {
            s.gg += part[b * nc + c].gg;
            s.dg += part[b * nc + c].dg;
            s.dd += part[b * nc + c].dd;
          }
          bool nb;
          l2_factors(s, a.step, a.eps, inv_gn[b], scale[b], nb);
          nan[b] = nb;
        }
        at::parallel_for(0, B * nc, 1, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t b = t / nc, c = t % nc;
            K.l2_write(a, b, c * chunk, std::min(n, (c + 1) * chunk), inv_gn[b], scale[b],
                       nan[b] != 0);
          }
        });
      }
      return;
    }
    case Norm::L1: {
      at::parallel_for(0, B, std::max<int64_t>(1, 4096 / n),
                       [&](int64_t b0, int64_t b1) { K.l1(a, b0, b1); });
      return;
    }
  }
}

StepArgs make_args(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad,
                   const at::Tensor& out, double step, double eps, double lo, double hi,
                   double q) {
  StepArgs a;
  a.x = x.const_data_ptr<float>();
  a.x0 = x0.const_data_ptr<float>();
  a.g = grad.const_data_ptr<float>();
  a.out = out.mutable_data_ptr<float>();
  a.batch = x.size(0);
  a.n = a.batch == 0 ? 0 : x.numel() / a.batch;
  a.step = step;
  a.eps = eps;
  a.lo = lo;
  a.hi = hi;
  a.k = l1_topk(a.n, q);
  return a;
}

at::Tensor pgd_step_cpu(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad,
                        double step, double eps, c10::string_view norm, double lo, double hi,
                        double l1_quantile) {
  check_step_args("manifoldadv::pgd_step", x, x0, grad, step, eps, lo, hi, l1_quantile);
  const Norm nm = static_cast<Norm>(parse_norm(norm));
  const at::Tensor xc = x.contiguous(), x0c = x0.contiguous(), gc = grad.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  StepArgs a = make_args(xc, x0c, gc, out, step, eps, lo, hi, l1_quantile);
  a.stream_out = out.numel() * 4 >= kStreamBytes;
  run_step(a, nm);
  return out;
}

void pgd_step__cpu(at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad, double step,
                   double eps, c10::string_view norm, double lo, double hi, double l1_quantile) {
  check_step_args("manifoldadv::pgd_step_", x, x0, grad, step, eps, lo, hi, l1_quantile);
  const Norm nm = static_cast<Norm>(parse_norm(norm));
  // x0 or grad may be x itself, but not a different view into x's memory.
  at::assert_no_partial_overlap(x, x0);
  at::assert_no_partial_overlap(x, grad);
  const at::Tensor x0c = x0.contiguous(), gc = grad.contiguous();
  if (x.is_contiguous()) {
    run_step(make_args(x, x0c, gc, x, step, eps, lo, hi, l1_quantile), nm);
  } else {
    const at::Tensor xc = x.contiguous();
    at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
    run_step(make_args(xc, x0c, gc, out, step, eps, lo, hi, l1_quantile), nm);
    x.copy_(out);
  }
}

}  // namespace

// Which kernel table this process uses ("avx2" or "default"), for tests and `info`.
const char* active_kernel_name() { return active_kernels().name; }

}  // namespace manifoldadv::cpu

TORCH_LIBRARY_IMPL(manifoldadv, CPU, m) {
  m.impl("pgd_step", &manifoldadv::cpu::pgd_step_cpu);
  m.impl("pgd_step_", &manifoldadv::cpu::pgd_step__cpu);
}
