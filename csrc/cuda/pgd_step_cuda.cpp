// CUDA backend of manifoldadv::pgd_step / pgd_step_: torch glue (checks, allocation, stream)
// around the pure-CUDA launcher of pgd_step.cu. Compiled only when torch has CUDA.
#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "op_common.h"
#include "pgd_step.h"

namespace manifoldadv::cuda {
namespace {

DType kernel_dtype(const char* op, at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::Float32;
    case at::kHalf:
      return DType::Float16;
    case at::kBFloat16:
      return DType::BFloat16;
    default:
      TORCH_CHECK(false, op, ": the CUDA kernel takes float32, float16 or bfloat16, got ", t,
                  " (manifoldadv.ops.pgd_step upcasts other dtypes to float32)");
  }
}

// MANIFOLDADV_CUDA_L2=registers selects l2_regs_kernel for small samples (pgd_step.cu); block,
// or unset, the two-pass kernel. Read on every call so that one process can time both.
bool l2_in_registers() {
  const char* v = std::getenv("MANIFOLDADV_CUDA_L2");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "block") == 0) return false;
  TORCH_CHECK(std::strcmp(v, "registers") == 0, "MANIFOLDADV_CUDA_L2 must be block or registers, got '", v,
              "'");
  return true;
}

int multiprocessors(int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

DType check_args(const char* op, const at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad,
                 double step, double eps, double lo, double hi, double q) {
  TORCH_CHECK(x.is_cuda() && x0.device() == x.device() && grad.device() == x.device(), op,
              ": the CUDA kernel needs x, x0 and grad on one CUDA device, got ", x.device(), ", ",
              x0.device(), ", ", grad.device());
  TORCH_CHECK(x0.scalar_type() == x.scalar_type() && grad.scalar_type() == x.scalar_type(), op,
              ": x, x0 and grad must share one dtype, got ", x.scalar_type(), ", ",
              x0.scalar_type(), ", ", grad.scalar_type());
  check_step_common(op, x, x0, grad, step, eps, lo, hi, q);
  return kernel_dtype(op, x.scalar_type());
}

void run(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad, const at::Tensor& out,
         DType dt, int norm, double step, double eps, double lo, double hi, double q) {
  StepParams p;
  p.x = x.const_data_ptr();
  p.x0 = x0.const_data_ptr();
  p.g = grad.const_data_ptr();
  p.out = out.mutable_data_ptr();
  p.batch = x.size(0);
  p.n = p.batch == 0 ? 0 : x.numel() / p.batch;
  p.step = step;
  p.eps = eps;
  p.lo = lo;
  p.hi = hi;
  p.k = l1_topk(p.n, q);
  p.l2_in_registers = norm == static_cast<int>(Norm::L2) && l2_in_registers();
  if (p.batch == 0 || p.n == 0) return;
  const int device = x.get_device();
  C10_CUDA_CHECK(launch_pgd_step(p, dt, static_cast<Norm>(norm), multiprocessors(device),
                                 c10::cuda::getCurrentCUDAStream(device).stream()));
}

at::Tensor pgd_step_cuda(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad,
                         double step, double eps, c10::string_view norm, double lo, double hi,
                         double l1_quantile) {
  const char* op = "manifoldadv::pgd_step";
  const DType dt = check_args(op, x, x0, grad, step, eps, lo, hi, l1_quantile);
  const int nm = parse_norm(norm);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), x0c = x0.contiguous(), gc = grad.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  run(xc, x0c, gc, out, dt, nm, step, eps, lo, hi, l1_quantile);
  return out;
}

void pgd_step__cuda(at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad, double step,
                    double eps, c10::string_view norm, double lo, double hi, double l1_quantile) {
  const char* op = "manifoldadv::pgd_step_";
  const DType dt = check_args(op, x, x0, grad, step, eps, lo, hi, l1_quantile);
  const int nm = parse_norm(norm);
  const c10::cuda::CUDAGuard guard(x.device());
  at::assert_no_partial_overlap(x, x0);
  at::assert_no_partial_overlap(x, grad);
  const at::Tensor x0c = x0.contiguous(), gc = grad.contiguous();
  if (x.is_contiguous()) {
    run(x, x0c, gc, x, dt, nm, step, eps, lo, hi, l1_quantile);
  } else {
    const at::Tensor xc = x.contiguous();
    at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
    run(xc, x0c, gc, out, dt, nm, step, eps, lo, hi, l1_quantile);
    x.copy_(out);
  }
}

}  // namespace
}  // namespace manifoldadv::cuda

TORCH_LIBRARY_IMPL(manifoldadv, CUDA, m) {
  m.impl("pgd_step", &manifoldadv::cuda::pgd_step_cuda);
  m.impl("pgd_step_", &manifoldadv::cuda::pgd_step__cuda);
}
