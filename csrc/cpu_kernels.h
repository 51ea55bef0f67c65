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

#include <algorithm>
#include <cmath>
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

// The l2 step's per-sample factors from the read pass's sums: 1/||g|| (0 when g = 0), the
// rescale onto the eps ball, and whether the sample is NaN.
inline void l2_factors(const L2Sums& s, double step, double eps, float& inv_gn, float& scale,
                       bool& nan) {
  // ||d + step*g/||g|| ||^2 from the three sums of the read pass.
  nan = !std::isfinite(s.dd);
  const double gn = std::sqrt(s.gg);
  double dn2 = s.dd;
  double inv = 0.0;
  if (gn > 0.0) {
    inv = 1.0 / gn;
    dn2 += 2.0 * step * s.dg * inv + step * step * (s.gg * inv * inv);
  }
  const double dn = std::sqrt(std::max(dn2, 0.0));
  inv_gn = static_cast<float>(inv);
  scale = dn > eps ? static_cast<float>(eps / dn) : 1.0f;
}

// ------------------------------------------------------------------------- the attack engine
//
// A network of stride-1 Conv2d, ReLU, MaxPool2d(2), Flatten and Linear layers (after the
// classifier's per-channel normalisation), run on a tile of kLanes images with image l of the
// tile in vector lane l: activations are [C][H][W][kLanes], so every multiply-add is a full
// vector FMA whatever the channel count, and each image's arithmetic is the same whatever the
// batch, the tiling and the thread count. attack_engine_cpu.cpp parses the layers and owns
// threads and memory; attack_engine_kernel.h holds the per-ISA loops.

constexpr int64_t kLanes = 8;

enum class Layer : int { Normalize = 0, Conv = 1, Relu = 2, MaxPool2 = 3, Flatten = 4, Linear = 5 };

struct NetLayer {
  Layer type;
  int64_t c = 0, h = 1, w = 1;     // input shape (features: c = width, h = w = 1)
  int64_t oc = 0, oh = 1, ow = 1;  // output shape
  int64_t k = 0, pad = 0;          // conv kernel size and zero padding
  const float* w_fwd = nullptr;    // conv [oc][c][k][k]; linear [oc][c]
  const float* w_bwd = nullptr;    // conv [c][oc][k][k] flipped; linear [c][oc] (transposed)
  const float* bias = nullptr;     // conv / linear [oc]; normalize: mean [c]
  const float* scale = nullptr;    // normalize: std [c]
  int64_t in_size() const { return c * h * w; }
  int64_t out_size() const { return oc * oh * ow; }
};

struct Net {
  const NetLayer* layers = nullptr;
  int64_t num_layers = 0;
  int64_t n = 0;        // input values per image
  int64_t classes = 0;  // output width
};

// One call's work: `steps` attack steps on images [tile0*kLanes, tile1*kLanes) of `batch`, then
// (grad != nullptr) the input gradient of the summed cross-entropy at the result, or
// (logits != nullptr) the logits there.
struct EngineArgs {
  const Net* net = nullptr;
  const float* x0 = nullptr;  // [batch][n]
  const int64_t* y = nullptr;   // [batch]
  float* x = nullptr;         // [batch][n]: the start on entry, the result on return
  float* logits = nullptr;    // [batch][classes] or nullptr
  float* grad = nullptr;      // [batch][n] or nullptr
  int64_t batch = 0, steps = 0;
  Norm norm = Norm::Linf;
  StepArgs step;  // step, eps, lo, hi and k (x, x0, g, out, batch, n are set per tile)
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
  // The attack engine over tiles [tile0, tile1), with `work` of engine_workspace(net) floats.
  void (*engine_tiles)(const EngineArgs&, int64_t tile0, int64_t tile1, float* work);
};

// The kernel table this process uses (pgd_step_cpu.cpp: chosen once from the CPU capability).
const Kernels& active_kernels();

// The floats of one engine thread's scratch (attack_engine_kernel.h carves it): activations,
// the zero-padded copy a convolution reads, two gradient buffers, a sample-major gradient.
struct EngineLayout {
  int64_t pad = 0, grad = 0, total = 0;
};

inline EngineLayout engine_layout(const Net& net) {
  int64_t acts = net.n, widest = net.n, pad = 0;
  for (int64_t i = 0; i < net.num_layers; ++i) {
    const NetLayer& l = net.layers[i];
    acts += l.out_size();
    widest = std::max(widest, l.out_size());
    if (l.type == Layer::Conv) {
      const int64_t e = l.k - 1;
      pad = std::max({pad, l.c * (l.h + 2 * l.pad) * (l.w + 2 * l.pad),
                      l.oc * (l.oh + 2 * e) * (l.ow + 2 * e)});
    }
  }
  EngineLayout out;
  out.pad = pad * kLanes;
  out.grad = widest * kLanes;
  out.total = acts * kLanes + out.pad + 2 * out.grad + kLanes * net.n;
  return out;
}

namespace DEFAULT {
const Kernels& kernels();
}
#if defined(MANIFOLDADV_HAVE_AVX2)
namespace AVX2 {
const Kernels& kernels();
}
#endif

}  // namespace manifoldadv::cpu
