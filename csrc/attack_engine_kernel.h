// The attack engine's loops (design in cpu_kernels.h), written with at::vec so that one source
// serves every CPU capability. Included after pgd_step_kernel.h, whose step kernels each tile
// calls, so that a fused step is exactly manifoldadv::pgd_step_ on the same gradient.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_kernels.h"

namespace manifoldadv::cpu::CPU_CAPABILITY {
namespace {

static_assert(kF == kLanes, "the engine puts one image in each float lane");
constexpr int64_t kL = kLanes;

// ------------------------------------------------------------------------------- convolution
//
// out[co][oy][ox] = bias[co] + sum_{ci,ky,kx} w[co][ci][ky][kx] * in[ci][oy+off+ky][ox+off+kx]
// over an input already padded ([ci_n][hi][wi] images); bias may be null. A block keeps CB
// output channels x R output columns of accumulators in registers: per weight tap it loads R
// input vectors and CB broadcast weights for CB*R FMAs.

template <int CB, int R>
inline void conv_block(const float* in, int64_t ci_n, int64_t hi, int64_t wi, const float* w,
                       int64_t k, const float* bias, int64_t co, int64_t oy, int64_t ox,
                       int64_t off, float* out, int64_t ho, int64_t wo) {
  fVec acc[CB][R];
#pragma GCC unroll 8
  for (int c = 0; c < CB; ++c) {
    const fVec b(bias != nullptr ? bias[co + c] : 0.0f);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[c][r] = b;
  }
  const int64_t kk = k * k, wstride = ci_n * kk;
  for (int64_t ci = 0; ci < ci_n; ++ci) {
    const float* wc = w + (co * ci_n + ci) * kk;
    for (int64_t ky = 0; ky < k; ++ky) {
      const float* row = in + ((ci * hi + oy + off + ky) * wi + ox + off) * kL;
      const float* wr = wc + ky * k;
      for (int64_t kx = 0; kx < k; ++kx) {
        fVec wv[CB];
#pragma GCC unroll 8
        for (int c = 0; c < CB; ++c) wv[c] = fVec(wr[c * wstride + kx]);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const fVec v = fVec::loadu(row + (r + kx) * kL);
#pragma GCC unroll 8
          for (int c = 0; c < CB; ++c) acc[c][r] = at::vec::fmadd(wv[c], v, acc[c][r]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < CB; ++c) {
    float* o = out + (((co + c) * ho + oy) * wo + ox) * kL;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[c][r].store(o + r * kL);
  }
}

constexpr int kCols = 6;  // output columns per block: 2 x 6 accumulators + 2 weights in registers

template <int CB>
inline void conv_row(const float* in, int64_t ci_n, int64_t hi, int64_t wi, const float* w,
                     int64_t k, const float* bias, int64_t co, int64_t oy, int64_t off, float* out,
                     int64_t ho, int64_t wo) {
  int64_t ox = 0;
  for (; ox + kCols <= wo; ox += kCols) {
    conv_block<CB, kCols>(in, ci_n, hi, wi, w, k, bias, co, oy, ox, off, out, ho, wo);
  }
#define MANIFOLDADV_CONV_TAIL(R)                                                              \
  case R:                                                                                      \
    conv_block<CB, R>(in, ci_n, hi, wi, w, k, bias, co, oy, ox, off, out, ho, wo);             \
    break;
  switch (wo - ox) {
    MANIFOLDADV_CONV_TAIL(1)
    MANIFOLDADV_CONV_TAIL(2)
    MANIFOLDADV_CONV_TAIL(3)
    MANIFOLDADV_CONV_TAIL(4)
    MANIFOLDADV_CONV_TAIL(5)
    default:
      break;
  }
#undef MANIFOLDADV_CONV_TAIL
}

void conv(const float* in, int64_t ci_n, int64_t hi, int64_t wi, const float* w, int64_t k,
          const float* bias, int64_t off, float* out, int64_t co_n, int64_t ho, int64_t wo) {
  int64_t co = 0;
  for (; co + 2 <= co_n; co += 2) {
    for (int64_t oy = 0; oy < ho; ++oy) {
      conv_row<2>(in, ci_n, hi, wi, w, k, bias, co, oy, off, out, ho, wo);
    }
  }
  if (co < co_n) {
    for (int64_t oy = 0; oy < ho; ++oy) {
      conv_row<1>(in, ci_n, hi, wi, w, k, bias, co, oy, off, out, ho, wo);
    }
  }
}

// dst [c][h+2p][w+2p] = src [c][h][w] inside a zero border of width p.
void pad_copy(const float* src, int64_t c, int64_t h, int64_t w, int64_t p, float* dst) {
  const int64_t wp = w + 2 * p, row = wp * kL;
  for (int64_t ch = 0; ch < c; ++ch) {
    float* d = dst + ch * (h + 2 * p) * row;
    std::memset(d, 0, sizeof(float) * p * row);
    d += p * row;
    for (int64_t y = 0; y < h; ++y, d += row) {
      std::memset(d, 0, sizeof(float) * p * kL);
      std::memcpy(d + p * kL, src + (ch * h + y) * w * kL, sizeof(float) * w * kL);
      std::memset(d + (p + w) * kL, 0, sizeof(float) * p * kL);
    }
    std::memset(d, 0, sizeof(float) * p * row);
  }
}

// ------------------------------------------------------------------------------------ linear
//
// out[j] = bias[j] + sum_i w[j][i] * in[i] over f inputs; J outputs per block (one input load
// serves J FMAs).

template <int J>
inline void linear_block(const float* in, int64_t f, const float* w, const float* bias, int64_t j,
                         float* out) {
  fVec acc[J];
#pragma GCC unroll 8
  for (int q = 0; q < J; ++q) acc[q] = fVec(bias != nullptr ? bias[j + q] : 0.0f);
  const float* wj = w + j * f;
  for (int64_t i = 0; i < f; ++i) {
    const fVec v = fVec::loadu(in + i * kL);
#pragma GCC unroll 8
    for (int q = 0; q < J; ++q) acc[q] = at::vec::fmadd(fVec(wj[q * f + i]), v, acc[q]);
  }
#pragma GCC unroll 8
  for (int q = 0; q < J; ++q) acc[q].store(out + (j + q) * kL);
}

void linear(const float* in, int64_t f, const float* w, const float* bias, float* out, int64_t o) {
  int64_t j = 0;
  for (; j + 8 <= o; j += 8) linear_block<8>(in, f, w, bias, j, out);
  switch (o - j) {
    case 7: linear_block<7>(in, f, w, bias, j, out); break;
    case 6: linear_block<6>(in, f, w, bias, j, out); break;
    case 5: linear_block<5>(in, f, w, bias, j, out); break;
    case 4: linear_block<4>(in, f, w, bias, j, out); break;
    case 3: linear_block<3>(in, f, w, bias, j, out); break;
    case 2: linear_block<2>(in, f, w, bias, j, out); break;
    case 1: linear_block<1>(in, f, w, bias, j, out); break;
    default: break;
  }
}

// ------------------------------------------------------------------------------ the network

// The engine's scratch, carved from one buffer: act[i] (the input of layer i; act[num_layers]
// the logits), the padding buffer, two gradient buffers and the sample-major gradient.
struct Scratch {
  std::vector<float*> act;
  float* pad;
  float* g0;
  float* g1;
  float* gs;
};

Scratch carve(const Net& net, float* work) {
  Scratch s;
  const EngineLayout lay = engine_layout(net);
  s.act.resize(static_cast<size_t>(net.num_layers) + 1);
  float* p = work;
  s.act[0] = p;
  p += net.n * kL;
  for (int64_t i = 0; i < net.num_layers; ++i) {
    s.act[i + 1] = p;
    p += net.layers[i].out_size() * kL;
  }
  s.pad = p;
  p += lay.pad;
  s.g0 = p;
  p += lay.grad;
  s.g1 = p;
  p += lay.grad;
  s.gs = p;
  return s;
}

void forward(const Net& net, const Scratch& s) {
  for (int64_t i = 0; i < net.num_layers; ++i) {
    const NetLayer& ly = net.layers[i];
    const float* in = s.act[i];
    float* out = s.act[i + 1];
    const int64_t hw = ly.h * ly.w;
    switch (ly.type) {
      case Layer::Normalize:
        for (int64_t c = 0; c < ly.c; ++c) {
          const fVec m(ly.bias[c]), sd(ly.scale[c]);
          for (int64_t p = c * hw; p < (c + 1) * hw; ++p) {
            ((fVec::loadu(in + p * kL) - m) / sd).store(out + p * kL);
          }
        }
        break;
      case Layer::Conv: {
        const float* src = in;
        if (ly.pad > 0) {
          pad_copy(in, ly.c, ly.h, ly.w, ly.pad, s.pad);
          src = s.pad;
        }
        conv(src, ly.c, ly.h + 2 * ly.pad, ly.w + 2 * ly.pad, ly.w_fwd, ly.k, ly.bias, 0, out, ly.oc,
             ly.oh, ly.ow);
        break;
      }
      case Layer::Relu: {
        const fVec zero(0.0f);
        for (int64_t p = 0; p < ly.in_size(); ++p) {
          at::vec::maximum(fVec::loadu(in + p * kL), zero).store(out + p * kL);
        }
        break;
      }
      case Layer::MaxPool2:
        for (int64_t c = 0; c < ly.oc; ++c) {
          for (int64_t y = 0; y < ly.oh; ++y) {
            const float* r0 = in + (c * ly.h + 2 * y) * ly.w * kL;
            const float* r1 = r0 + ly.w * kL;
            float* o = out + (c * ly.oh + y) * ly.ow * kL;
            for (int64_t x = 0; x < ly.ow; ++x) {
              const fVec a = at::vec::maximum(fVec::loadu(r0 + 2 * x * kL), fVec::loadu(r0 + (2 * x + 1) * kL));
              const fVec b = at::vec::maximum(fVec::loadu(r1 + 2 * x * kL), fVec::loadu(r1 + (2 * x + 1) * kL));
              at::vec::maximum(a, b).store(o + x * kL);
            }
          }
        }
        break;
      case Layer::Flatten:
        std::memcpy(out, in, sizeof(float) * ly.in_size() * kL);
        break;
      case Layer::Linear:
        linear(in, ly.c, ly.w_fwd, ly.bias, out, ly.oc);
        break;
    }
  }
}

// d = dL/dlogits of the summed cross-entropy, per lane: softmax - onehot(y), in float64.
void cross_entropy_grad(const float* z, int64_t nc, const int64_t* y, int64_t lanes, float* d) {
  for (int64_t l = 0; l < kL; ++l) {
    if (l >= lanes) {
      for (int64_t j = 0; j < nc; ++j) d[j * kL + l] = 0.0f;
      continue;
    }
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < nc; ++j) m = std::max(m, static_cast<double>(z[j * kL + l]));
    double sum = 0.0;
    for (int64_t j = 0; j < nc; ++j) sum += std::exp(static_cast<double>(z[j * kL + l]) - m);
    for (int64_t j = 0; j < nc; ++j) {
      const double p = std::exp(static_cast<double>(z[j * kL + l]) - m) / sum;
      d[j * kL + l] = static_cast<float>(p - (j == y[l] ? 1.0 : 0.0));
    }
  }
}

// From d = dL/dlogits in s.g0: the gradient with respect to the input; returns where it is.
float* backward(const Net& net, const Scratch& s) {
  float* d = s.g0;
  float* other = s.g1;
  for (int64_t i = net.num_layers - 1; i >= 0; --i) {
    const NetLayer& ly = net.layers[i];
    float* din = other;
    const int64_t hw = ly.h * ly.w;
    switch (ly.type) {
      case Layer::Normalize:
        for (int64_t c = 0; c < ly.c; ++c) {
          const fVec sd(ly.scale[c]);
          for (int64_t p = c * hw; p < (c + 1) * hw; ++p) {
            (fVec::loadu(d + p * kL) / sd).store(din + p * kL);
          }
        }
        break;
      case Layer::Conv: {
        // dL/din = the correlation of dL/dout, zero-padded by k-1, with the flipped kernel
        // transposed over channels, read from offset pad.
        const int64_t e = ly.k - 1;
        pad_copy(d, ly.oc, ly.oh, ly.ow, e, s.pad);
        conv(s.pad, ly.oc, ly.oh + 2 * e, ly.ow + 2 * e, ly.w_bwd, ly.k, nullptr, ly.pad, din, ly.c,
             ly.h, ly.w);
        break;
      }
      case Layer::Relu: {
        const fVec zero(0.0f);
        const float* out = s.act[i + 1];
        for (int64_t p = 0; p < ly.in_size(); ++p) {
          (fVec::loadu(d + p * kL) & (fVec::loadu(out + p * kL) > zero)).store(din + p * kL);
        }
        break;
      }
      case Layer::MaxPool2: {
        // Each window's gradient goes to its first maximum in row-major order (as torch's
        // max_pool2d); rows and columns a floor-mode pool drops get zero.
        std::memset(din, 0, sizeof(float) * ly.in_size() * kL);
        const float* in = s.act[i];
        const float* out = s.act[i + 1];
        for (int64_t c = 0; c < ly.oc; ++c) {
          for (int64_t y = 0; y < ly.oh; ++y) {
            for (int64_t x = 0; x < ly.ow; ++x) {
              const int64_t o = ((c * ly.oh + y) * ly.ow + x) * kL;
              const fVec m = fVec::loadu(out + o), g = fVec::loadu(d + o);
              const int64_t q[4] = {((c * ly.h + 2 * y) * ly.w + 2 * x) * kL,
                                    ((c * ly.h + 2 * y) * ly.w + 2 * x + 1) * kL,
                                    ((c * ly.h + 2 * y + 1) * ly.w + 2 * x) * kL,
                                    ((c * ly.h + 2 * y + 1) * ly.w + 2 * x + 1) * kL};
              fVec idx(3.0f);
              for (int t = 2; t >= 0; --t) {
                idx = fVec::blendv(idx, fVec(static_cast<float>(t)), fVec::loadu(in + q[t]) == m);
              }
              for (int t = 0; t < 4; ++t) (g & (idx == fVec(static_cast<float>(t)))).store(din + q[t]);
            }
          }
        }
        break;
      }
      case Layer::Flatten:
        continue;  // the same values in the same layout
      case Layer::Linear:
        linear(d, ly.oc, ly.w_bwd, nullptr, din, ly.c);
        break;
    }
    other = d;
    d = din;
  }
  return d;
}

// act[0] = the tile's images, lane l = image b0 + l (zeros past the batch).
void pack(const float* x, int64_t n, int64_t lanes, float* a) {
  for (int64_t l = 0; l < kL; ++l) {
    if (l < lanes) {
      const float* src = x + l * n;
      for (int64_t p = 0; p < n; ++p) a[p * kL + l] = src[p];
    } else {
      for (int64_t p = 0; p < n; ++p) a[p * kL + l] = 0.0f;
    }
  }
}

void unpack(const float* a, int64_t n, int64_t lanes, float* x) {
  for (int64_t l = 0; l < lanes; ++l) {
    float* dst = x + l * n;
    for (int64_t p = 0; p < n; ++p) dst[p] = a[p * kL + l];
  }
}

void engine_tiles(const EngineArgs& a, int64_t tile0, int64_t tile1, float* work) {
  const Net& net = *a.net;
  const int64_t n = net.n, nc = net.classes;
  const Scratch s = carve(net, work);
  float* const logits = s.act[net.num_layers];
  for (int64_t t = tile0; t < tile1; ++t) {
    const int64_t b0 = t * kL, lanes = std::min(kL, a.batch - b0);
    const int64_t* y = a.y + b0;
    float* x = a.x + b0 * n;
    auto input_grad = [&]() {
      pack(x, n, lanes, s.act[0]);
      forward(net, s);
      cross_entropy_grad(logits, nc, y, lanes, s.g0);
      return backward(net, s);
    };
    StepArgs st = a.step;
    st.x = x;
    st.x0 = a.x0 + b0 * n;
    st.g = s.gs;
    st.out = x;
    st.batch = lanes;
    st.n = n;
    st.stream_out = false;
    for (int64_t k = 0; k < a.steps; ++k) {
      unpack(input_grad(), n, lanes, s.gs);
      switch (a.norm) {
        case Norm::Linf:
          linf_range(st, 0, lanes * n);
          break;
        case Norm::L2:
          for (int64_t b = 0; b < lanes; ++b) {
            float inv_gn, scale;
            bool nan;
            l2_factors(l2_sums(st, b, 0, n), st.step, st.eps, inv_gn, scale, nan);
            l2_write(st, b, 0, n, inv_gn, scale, nan);
          }
          break;
        case Norm::L1:
          l1_samples(st, 0, lanes);
          break;
      }
    }
    if (a.grad != nullptr) {
      unpack(input_grad(), n, lanes, a.grad + b0 * n);
    } else if (a.logits != nullptr) {
      pack(x, n, lanes, s.act[0]);
      forward(net, s);
    }
    if (a.logits != nullptr) {
      for (int64_t l = 0; l < lanes; ++l) {
        for (int64_t j = 0; j < nc; ++j) a.logits[(b0 + l) * nc + j] = logits[j * kL + l];
      }
    }
  }
}

}  // namespace
}  // namespace manifoldadv::cpu::CPU_CAPABILITY
