// CPU backend of manifoldadv::fused_attack and manifoldadv::attack_input_grad: the network's
// layers parsed and checked, the backward weights prepared, outputs allocated, tiles of images
// spread over threads (at::parallel_for). The loops are in attack_engine_kernel.h.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "cpu_kernels.h"
#include "op_common.h"

namespace manifoldadv::cpu {
namespace {

// The parsed network and the tensors its pointers point into.
struct Parsed {
  std::vector<NetLayer> layers;
  std::vector<at::Tensor> keep;
  Net net;
};

const char* layer_name(int64_t code) {
  switch (code) {
    case 0: return "normalize";
    case 1: return "conv";
    case 2: return "relu";
    case 3: return "maxpool2";
    case 4: return "flatten";
    case 5: return "linear";
    default: return "?";
  }
}

// layers: (code, argument) pairs; params: the tensors the layers take, in order (normalize:
// mean [C], std [C]; conv: weight [O, C, k, k], bias [O] with argument = zero padding; linear:
// weight [O, F], bias [O]). The input is [B, C, H, W] images.
Parsed parse(const char* op, const at::Tensor& x, at::TensorList params, at::IntArrayRef codes) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be [batch, channels, height, width], got ", x.sizes());
  TORCH_CHECK(codes.size() % 2 == 0 && !codes.empty(), op,
              ": layers must be a non-empty list of (code, argument) pairs, got ", codes.size(),
              " numbers");
  Parsed p;
  int64_t c = x.size(1), h = x.size(2), w = x.size(3);
  bool flat = false;
  size_t next = 0;
  auto take = [&](const char* what, size_t li) {
    TORCH_CHECK(next < params.size(), op, ": layer ", li, " (", what, ") has no parameter left (",
                params.size(), " given)");
    const at::Tensor t = params[next++];
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, op, ": layer ", li, " (",
                what, ") parameters must be float32 on the CPU, got ", t.scalar_type(), " on ",
                t.device());
    at::Tensor ct = t.contiguous();
    p.keep.push_back(ct);
    return ct;
  };
  for (size_t i = 0; i < codes.size() / 2; ++i) {
    const int64_t code = codes[2 * i], arg = codes[2 * i + 1];
    TORCH_CHECK(code >= 0 && code <= 5, op, ": layer ", i, " has unknown code ", code);
    NetLayer l;
    l.type = static_cast<Layer>(code);
    l.c = c;
    l.h = h;
    l.w = w;
    const char* name = layer_name(code);
    TORCH_CHECK(!flat || l.type == Layer::Relu || l.type == Layer::Linear || l.type == Layer::Flatten,
                op, ": layer ", i, " (", name, ") needs images but follows a flatten");
    switch (l.type) {
      case Layer::Normalize: {
        const at::Tensor m = take(name, i);
        const at::Tensor s = take(name, i);
        TORCH_CHECK(m.numel() == c && s.numel() == c, op, ": layer ", i,
                    " (normalize) needs a mean and a std per channel (", c, "), got ", m.numel(),
                    " and ", s.numel());
        l.bias = m.const_data_ptr<float>();
        l.scale = s.const_data_ptr<float>();
        break;
      }
      case Layer::Conv: {
        const at::Tensor wt = take(name, i);
        const at::Tensor b = take(name, i);
        TORCH_CHECK(wt.dim() == 4 && wt.size(1) == c && wt.size(2) == wt.size(3) && wt.size(2) >= 1,
                    op, ": layer ", i, " (conv) needs a weight [out, ", c, ", k, k], got ",
                    wt.sizes());
        TORCH_CHECK(b.dim() == 1 && b.size(0) == wt.size(0), op, ": layer ", i,
                    " (conv) needs a bias [", wt.size(0), "], got ", b.sizes());
        TORCH_CHECK(arg >= 0, op, ": layer ", i, " (conv) padding must be >= 0, got ", arg);
        l.k = wt.size(2);
        l.pad = arg;
        l.oc = wt.size(0);
        TORCH_CHECK(h + 2 * arg >= l.k && w + 2 * arg >= l.k, op, ": layer ", i, " (conv): a ",
                    l.k, "x", l.k, " kernel does not fit a ", h, "x", w, " input padded by ", arg);
        h = h + 2 * arg - l.k + 1;
        w = w + 2 * arg - l.k + 1;
        l.w_fwd = wt.const_data_ptr<float>();
        p.keep.push_back(wt.flip({2, 3}).transpose(0, 1).contiguous());
        l.w_bwd = p.keep.back().const_data_ptr<float>();
        l.bias = b.const_data_ptr<float>();
        c = l.oc;
        break;
      }
      case Layer::Relu:
        break;
      case Layer::MaxPool2:
        TORCH_CHECK(h >= 2 && w >= 2, op, ": layer ", i, " (maxpool2) needs at least 2x2, got ",
                    h, "x", w);
        h /= 2;
        w /= 2;
        break;
      case Layer::Flatten:
        c = c * h * w;
        h = w = 1;
        flat = true;
        break;
      case Layer::Linear: {
        TORCH_CHECK(flat, op, ": layer ", i, " (linear) needs a flatten before it");
        const at::Tensor wt = take(name, i);
        const at::Tensor b = take(name, i);
        TORCH_CHECK(wt.dim() == 2 && wt.size(1) == c, op, ": layer ", i,
                    " (linear) needs a weight [out, ", c, "], got ", wt.sizes());
        TORCH_CHECK(b.dim() == 1 && b.size(0) == wt.size(0), op, ": layer ", i,
                    " (linear) needs a bias [", wt.size(0), "], got ", b.sizes());
        l.oc = wt.size(0);
        l.w_fwd = wt.const_data_ptr<float>();
        p.keep.push_back(wt.t().contiguous());
        l.w_bwd = p.keep.back().const_data_ptr<float>();
        l.bias = b.const_data_ptr<float>();
        c = l.oc;
        break;
      }
    }
    if (l.type != Layer::Conv && l.type != Layer::Linear) l.oc = c;
    l.oh = h;
    l.ow = w;
    p.layers.push_back(l);
  }
  TORCH_CHECK(next == params.size(), op, ": ", params.size() - next, " parameters left unused");
  TORCH_CHECK(flat, op, ": the network must end in features (flatten, then linear layers)");
  p.net.layers = p.layers.data();
  p.net.num_layers = static_cast<int64_t>(p.layers.size());
  p.net.n = x.size(1) * x.size(2) * x.size(3);
  p.net.classes = c;
  return p;
}

void check_images(const char* op, const char* what, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, op, ": ", what,
              " must be float32 on the CPU, got ", t.scalar_type(), " on ", t.device());
}

void check_labels(const char* op, const at::Tensor& y, int64_t batch, int64_t classes) {
  TORCH_CHECK(y.device().is_cpu() && y.scalar_type() == at::kLong && y.dim() == 1 &&
                  y.size(0) == batch,
              op, ": y must be int64 [", batch, "] on the CPU, got ", y.scalar_type(), " ",
              y.sizes(), " on ", y.device());
  const int64_t* p = y.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < batch; ++i) {
    TORCH_CHECK(p[i] >= 0 && p[i] < classes, op, ": label ", p[i], " at ", i, " is outside [0, ",
                classes, ")");
  }
}

void run(EngineArgs& a) {
  const int64_t tiles = (a.batch + kLanes - 1) / kLanes;
  if (tiles == 0) return;
  const Kernels& K = active_kernels();
  const int64_t floats = engine_layout(*a.net).total;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> work(static_cast<size_t>(floats));
    K.engine_tiles(a, t0, t1, work.data());
  });
}

std::tuple<at::Tensor, at::Tensor> fused_attack_cpu(
    const at::Tensor& x0, const at::Tensor& y, const at::Tensor& x, at::TensorList params,
    at::IntArrayRef layers, int64_t steps, double step, double eps, c10::string_view norm,
    double lo, double hi, double l1_quantile, bool want_logits) {
  const char* op = "manifoldadv::fused_attack";
  check_images(op, "x0", x0);
  check_images(op, "x", x);
  check_step_common(op, x, x0, x, step, eps, lo, hi, l1_quantile);
  TORCH_CHECK(steps >= 0, op, ": steps must be >= 0, got ", steps);
  const Norm nm = static_cast<Norm>(parse_norm(norm));
  Parsed p = parse(op, x, params, layers);
  const int64_t batch = x.size(0);
  check_labels(op, y, batch, p.net.classes);
  const at::Tensor x0c = x0.contiguous(), yc = y.contiguous();
  at::Tensor out = x.contiguous().clone();
  at::Tensor logits = at::empty({want_logits ? batch : 0, p.net.classes}, x.options());
  EngineArgs a;
  a.net = &p.net;
  a.x0 = x0c.const_data_ptr<float>();
  a.y = yc.const_data_ptr<int64_t>();
  a.x = out.mutable_data_ptr<float>();
  a.logits = want_logits ? logits.mutable_data_ptr<float>() : nullptr;
  a.batch = batch;
  a.steps = steps;
  a.norm = nm;
  a.step.step = step;
  a.step.eps = eps;
  a.step.lo = lo;
  a.step.hi = hi;
  a.step.k = l1_topk(p.net.n, l1_quantile);
  run(a);
  return {out, logits};
}

std::tuple<at::Tensor, at::Tensor> attack_input_grad_cpu(const at::Tensor& x, const at::Tensor& y,
                                                         at::TensorList params,
                                                         at::IntArrayRef layers) {
  const char* op = "manifoldadv::attack_input_grad";
  check_images(op, "x", x);
  Parsed p = parse(op, x, params, layers);
  const int64_t batch = x.size(0);
  check_labels(op, y, batch, p.net.classes);
  const at::Tensor yc = y.contiguous();
  at::Tensor xc = x.contiguous().clone();  // the engine writes its x (here: no steps)
  at::Tensor logits = at::empty({batch, p.net.classes}, x.options());
  at::Tensor grad = at::empty_like(xc);
  EngineArgs a;
  a.net = &p.net;
  a.x0 = xc.const_data_ptr<float>();
  a.y = yc.const_data_ptr<int64_t>();
  a.x = xc.mutable_data_ptr<float>();
  a.logits = logits.mutable_data_ptr<float>();
  a.grad = grad.mutable_data_ptr<float>();
  a.batch = batch;
  run(a);
  return {logits, grad};
}

}  // namespace
}  // namespace manifoldadv::cpu

TORCH_LIBRARY_IMPL(manifoldadv, CPU, m) {
  m.impl("fused_attack", &manifoldadv::cpu::fused_attack_cpu);
  m.impl("attack_input_grad", &manifoldadv::cpu::attack_input_grad_cpu);
}
