// CUDA PGD-step kernels: pure CUDA (no torch headers) behind launch_pgd_step (pgd_step.h).
// Semantics are manifoldadv/ops.py's (see pgd_step_reference), computed in float32 from
// float32 / float16 / bfloat16 storage exactly like the reference's `.float()` upcast, with
// explicit _rn intrinsics wherever the reference rounds each operation separately (nvcc would
// otherwise contract a*b + c into one FMA).
//
// - linf: elementwise, grid-stride, 16-byte vector loads when every pointer is aligned.
// - l2: one block per sample: a read pass accumulating ||g||^2, <x - x0, g>, ||x - x0||^2 in
//   float64 and one block reduction, then a write pass (16-byte loads when possible). With
//   StepParams::l2_in_registers, samples of up to 1024 packs stay in registers instead of
//   being read twice (l2_regs_kernel).
// - l1: one block per sample: the SLIDE threshold (k-th largest |g|) by a 4-pass radix select
//   over the float bits (|g| >= 0, so bits order like values; 256-bin shared histograms), then
//   the exact projection's lam by the bracketed Newton iteration of the CPU kernel (see
//   csrc/pgd_step_kernel.h): every pass is one block reduction of (F(t), S(t), #active(t)); all
//   threads see identical reduced values, so they take identical, uniform decisions. v is
//   recomputed from x, x0, g on every pass (no scratch), which also keeps in-place calls safe.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "pgd_step.h"

namespace manifoldadv::cuda {
namespace {

constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / static_cast<int>(sizeof(T));
  T v[kSize];
};

__device__ __forceinline__ float nan_f() { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ float finite_or_zero(float g) { return isfinite(g) ? g : 0.0f; }

struct Sum3 {
  double a, b, c;
};

// Sum over the block of WARPS warps; every thread returns the same value (same order of additions).
template <int WARPS = kWarps>
__device__ Sum3 block_sum3(Sum3 v, Sum3* smem) {
  for (int o = 16; o > 0; o >>= 1) {
    v.a += __shfl_down_sync(0xffffffffu, v.a, o);
    v.b += __shfl_down_sync(0xffffffffu, v.b, o);
    v.c += __shfl_down_sync(0xffffffffu, v.c, o);
  }
  __syncthreads();  // smem may still be read from the previous call
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  Sum3 r{0.0, 0.0, 0.0};
  for (int w = 0; w < WARPS; ++w) {
    r.a += smem[w].a;
    r.b += smem[w].b;
    r.c += smem[w].c;
  }
  return r;
}

__device__ double block_max(double v, double* smem) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_down_sync(0xffffffffu, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  double r = smem[0];
  for (int w = 1; w < kWarps; ++w) r = fmax(r, smem[w]);
  return r;
}

// ------------------------------------------------------------------------------------ linf

__device__ __forceinline__ float linf_one(float x, float x0, float g, float step, float eps,
                                          float lo, float hi) {
  g = finite_or_zero(g);
  const float s = g > 0.0f ? step : (g < 0.0f ? -step : 0.0f);
  float y = __fadd_rn(x, s);
  y = fminf(fmaxf(y, __fsub_rn(x0, eps)), __fadd_rn(x0, eps));
  y = fminf(fmaxf(y, lo), hi);
  return (isfinite(x) && isfinite(x0)) ? y : nan_f();
}

template <typename T>
__global__ void linf_kernel(const T* x, const T* x0, const T* g, T* out, int64_t total,
                            bool packed, float step, float eps, float lo, float hi) {
  constexpr int P = Pack<T>::kSize;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t npack = packed ? total / P : 0;
  for (int64_t p = tid; p < npack; p += stride) {
    const Pack<T> a = reinterpret_cast<const Pack<T>*>(x)[p];
    const Pack<T> b = reinterpret_cast<const Pack<T>*>(x0)[p];
    const Pack<T> c = reinterpret_cast<const Pack<T>*>(g)[p];
    Pack<T> o;
#pragma unroll
    for (int j = 0; j < P; ++j) {
      o.v[j] = from_f<T>(linf_one(to_f(a.v[j]), to_f(b.v[j]), to_f(c.v[j]), step, eps, lo, hi));
    }
    reinterpret_cast<Pack<T>*>(out)[p] = o;
  }
  for (int64_t i = npack * P + tid; i < total; i += stride) {
    out[i] = from_f<T>(linf_one(to_f(x[i]), to_f(x0[i]), to_f(g[i]), step, eps, lo, hi));
  }
}

// -------------------------------------------------------------------------------------- l2

struct L2Write {
  float step, inv, scale, lo, hi;
  bool nan;
  __device__ __forceinline__ float operator()(float x, float x0, float g) const {
    if (nan) return nan_f();
    // reference: t = x + step*(g/||g||); y = clamp(x0 + (t - x0)*scale, lo, hi)
    const float t = __fadd_rn(x, __fmul_rn(step, __fmul_rn(finite_or_zero(g), inv)));
    const float y = __fadd_rn(x0, __fmul_rn(__fsub_rn(t, x0), scale));
    return fminf(fmaxf(y, lo), hi);
  }
};

__device__ __forceinline__ void l2_acc(Sum3& s, float x, float x0, float g) {
  const double gd = finite_or_zero(g);
  const double d = __fsub_rn(x, x0);
  s.a += gd * gd;
  s.b += d * gd;
  s.c += d * d;
}

// The write pass's constants from the sample's sums (||g||^2, <x - x0, g>, ||x - x0||^2).
__device__ __forceinline__ L2Write l2_write(const Sum3& s, float step_f, double step, double eps, float lo,
                                            float hi) {
  L2Write w;
  w.nan = !isfinite(s.c);  // some x or x0 not finite
  const double gn = sqrt(s.a);
  double dn2 = s.c, inv = 0.0;
  if (gn > 0.0) {
    inv = 1.0 / gn;
    dn2 += 2.0 * step * s.b * inv + step * step * (s.a * inv * inv);
  }
  const double dn = sqrt(fmax(dn2, 0.0));
  w.step = step_f;
  w.inv = static_cast<float>(inv);
  w.scale = dn > eps ? static_cast<float>(eps / dn) : 1.0f;
  w.lo = lo;
  w.hi = hi;
  return w;
}

// One block per sample. PACKED: n is a multiple of the pack size and all pointers are aligned.
template <typename T, bool PACKED>
__global__ void l2_kernel(const T* x, const T* x0, const T* g, T* out, int64_t n, float step_f,
                          double step, double eps, float lo, float hi) {
  __shared__ Sum3 smem[kWarps];
  constexpr int P = Pack<T>::kSize;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  x += base;
  x0 += base;
  g += base;
  out += base;
  Sum3 s{0.0, 0.0, 0.0};
  if (PACKED) {
    for (int64_t p = threadIdx.x; p < n / P; p += kBlock) {
      const Pack<T> a = reinterpret_cast<const Pack<T>*>(x)[p];
      const Pack<T> b = reinterpret_cast<const Pack<T>*>(x0)[p];
      const Pack<T> c = reinterpret_cast<const Pack<T>*>(g)[p];
#pragma unroll
      for (int j = 0; j < P; ++j) l2_acc(s, to_f(a.v[j]), to_f(b.v[j]), to_f(c.v[j]));
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += kBlock) l2_acc(s, to_f(x[i]), to_f(x0[i]), to_f(g[i]));
  }
  const L2Write w = l2_write(block_sum3(s, smem), step_f, step, eps, lo, hi);
  if (PACKED) {
    for (int64_t p = threadIdx.x; p < n / P; p += kBlock) {
      const Pack<T> a = reinterpret_cast<const Pack<T>*>(x)[p];
      const Pack<T> b = reinterpret_cast<const Pack<T>*>(x0)[p];
      const Pack<T> c = reinterpret_cast<const Pack<T>*>(g)[p];
      Pack<T> o;
#pragma unroll
      for (int j = 0; j < P; ++j) o.v[j] = from_f<T>(w(to_f(a.v[j]), to_f(b.v[j]), to_f(c.v[j])));
      reinterpret_cast<Pack<T>*>(out)[p] = o;
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += kBlock) {
      out[i] = from_f<T>(w(to_f(x[i]), to_f(x0[i]), to_f(g[i])));
    }
  }
}

// One block of THREADS per sample of at most THREADS * R packs, held in registers between the
// reduction and the write: no second read, and smaller blocks than l2_kernel's when samples are
// small (more samples in flight per SM). Thread t owns packs t, t + THREADS, ...: with THREADS =
// kBlock the additions are l2_kernel's, in its order. n is a multiple of the pack size and all
// pointers are aligned. Every thread reads its packs before the block reduction's barriers and
// writes only its own packs after them, so in-place calls are safe.
template <typename T, int THREADS, int R>
__global__ void __launch_bounds__(THREADS) l2_regs_kernel(const T* x, const T* x0, const T* g, T* out,
                                                          int64_t n, float step_f, double step, double eps,
                                                          float lo, float hi) {
  static_assert(THREADS % 32 == 0 && THREADS <= kBlock, "whole warps, at most kBlock threads");
  __shared__ Sum3 smem[THREADS / 32];
  constexpr int P = Pack<T>::kSize;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  const Pack<T>* px = reinterpret_cast<const Pack<T>*>(x + base);
  const Pack<T>* px0 = reinterpret_cast<const Pack<T>*>(x0 + base);
  const Pack<T>* pg = reinterpret_cast<const Pack<T>*>(g + base);
  Pack<T>* po = reinterpret_cast<Pack<T>*>(out + base);
  const int npack = static_cast<int>(n / P);
  Pack<T> a[R], b[R], c[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {  // every load issued before any is used
    const int p = threadIdx.x + r * THREADS;
    if (p < npack) {
      a[r] = px[p];
      b[r] = px0[p];
      c[r] = pg[p];
    }
  }
  Sum3 s{0.0, 0.0, 0.0};
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (threadIdx.x + r * THREADS < npack) {
#pragma unroll
      for (int j = 0; j < P; ++j) l2_acc(s, to_f(a[r].v[j]), to_f(b[r].v[j]), to_f(c[r].v[j]));
    }
  }
  const L2Write w = l2_write(block_sum3<THREADS / 32>(s, smem), step_f, step, eps, lo, hi);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int p = threadIdx.x + r * THREADS;
    if (p < npack) {
      Pack<T> o;
#pragma unroll
      for (int j = 0; j < P; ++j) o.v[j] = from_f<T>(w(to_f(a[r].v[j]), to_f(b[r].v[j]), to_f(c[r].v[j])));
      po[p] = o;
    }
  }
}

// -------------------------------------------------------------------------------------- l1

struct L1Sample {
  float lo_f, hi_f;
  double lo, hi;
  // The gradient with non-finite entries and outward-pushing box coordinates zeroed.
  __device__ __forceinline__ float clean(float x, float g) const {
    g = finite_or_zero(g);
    const bool outward = (x >= hi_f && g > 0.0f) || (x <= lo_f && g < 0.0f);
    return outward ? 0.0f : g;
  }
  // Room to the box in the direction of v.
  __device__ __forceinline__ double room(float v, float x0) const {
    const double x0d = x0;
    return fmax(v > 0.0f ? hi - x0d : x0d - lo, 0.0);
  }
};

template <typename T>
__global__ void l1_kernel(const T* x, const T* x0, const T* g, T* out, int64_t n, int64_t k,
                          float step_f, double eps, float lo_f, float hi_f, double lo,
                          double hi) {
  __shared__ unsigned int hist[256];
  __shared__ Sum3 smem[kWarps];
  __shared__ double smax[kWarps];
  __shared__ uint32_t s_prefix;
  __shared__ long long s_rank;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  x += base;
  x0 += base;
  g += base;
  out += base;
  const L1Sample S{lo_f, hi_f, lo, hi};

  // (B) radix select of the k-th largest |g|: 4 passes of 8 bits, most significant first.
  uint32_t prefix = 0, mask = 0;
  long long rank = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int j = threadIdx.x; j < 256; j += kBlock) hist[j] = 0u;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += kBlock) {
      const uint32_t bits = __float_as_uint(fabsf(S.clean(to_f(x[i]), to_f(g[i]))));
      if ((bits & mask) == prefix) atomicAdd(&hist[(bits >> shift) & 0xFFu], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      long long above = 0;
      int bin = 255;
      for (; bin > 0; --bin) {
        if (above + static_cast<long long>(hist[bin]) >= rank) break;
        above += hist[bin];
      }
      s_prefix = prefix | (static_cast<uint32_t>(bin) << shift);
      s_rank = rank - above;
    }
    __syncthreads();
    prefix = s_prefix;
    rank = s_rank;
    mask |= 0xFFu << shift;
  }
  const float thr = __uint_as_float(prefix);

  // count = #{|g| >= thr, |g| > 0}; the reference's step * sign(g) * mask / count (float32)
  Sum3 c{0.0, 0.0, 0.0};
  for (int64_t i = threadIdx.x; i < n; i += kBlock) {
    const float a = fabsf(S.clean(to_f(x[i]), to_f(g[i])));
    c.a += (a >= thr && a > 0.0f) ? 1.0 : 0.0;
  }
  c = block_sum3(c, smem);
  const float sc = __fdiv_rn(step_f, static_cast<float>(c.a > 1.0 ? c.a : 1.0));

  auto v_of = [&](int64_t i, float& x0i) {
    const float xi = to_f(x[i]);
    x0i = to_f(x0[i]);
    const float gi = S.clean(xi, to_f(g[i]));
    const float a = fabsf(gi);
    const float s = (a >= thr && a > 0.0f) ? copysignf(sc, gi) : 0.0f;
    return __fadd_rn(__fsub_rn(xi, x0i), s);
  };

  // F(0) = sum min(|v|, u), max |v|, and whether the sample is finite.
  Sum3 f0{0.0, 0.0, 0.0};
  double vmax = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kBlock) {
    float x0i;
    const float xi = to_f(x[i]);
    const float v = v_of(i, x0i);
    const double av = fabs(static_cast<double>(v));
    f0.a += fmin(av, S.room(v, x0i));
    f0.b += (isfinite(xi) && isfinite(x0i)) ? 0.0 : 1.0;
    vmax = fmax(vmax, av);
  }
  f0 = block_sum3(f0, smem);
  vmax = block_max(vmax, smax);
  if (f0.b > 0.0) {  // a non-finite x or x0: NaN sample (uniform: every thread sees f0.b)
    for (int64_t i = threadIdx.x; i < n; i += kBlock) out[i] = from_f<T>(nan_f());
    return;
  }

  // (D) lam: bracketed Newton on F(lam) = eps (see csrc/pgd_step_kernel.h).
  auto eval = [&](double t) {
    Sum3 e{0.0, 0.0, 0.0};  // F(t), S(t), #active(t)
    for (int64_t i = threadIdx.x; i < n; i += kBlock) {
      float x0i;
      const float v = v_of(i, x0i);
      const double av = fabs(static_cast<double>(v));
      const double u = S.room(v, x0i);
      const double r = av - t;
      e.a += fmin(fmax(r, 0.0), u);
      if (r >= u) {
        e.b += u;
      } else if (r > 0.0) {
        e.b += av;
        e.c += 1.0;
      }
    }
    return block_sum3(e, smem);
  };
  double lam = 0.0;
  if (f0.a > eps) {
    double lo_t = 0.0, hi_t = vmax, t = 0.0;
    Sum3 e = eval(t);
    double resid_before = __longlong_as_double(0x7ff0000000000000LL);  // +inf
    bool last_newton = false, done = false;
    for (int it = 0; it < 200; ++it) {
      if (e.a > eps) {
        lo_t = t;
      } else {
        hi_t = t;
      }
      const double root = e.c > 0.0 ? (e.b - eps) / e.c : -1.0;
      if (root == t) {
        lam = t;
        done = true;
        break;
      }
      const double resid = fabs(e.a - eps);
      const bool stalled = last_newton && resid > 0.5 * resid_before;
      resid_before = resid;
      double next = root;
      last_newton = !stalled && root > lo_t && root < hi_t;
      if (!last_newton) {
        next = 0.5 * (lo_t + hi_t);
        if (!(next > lo_t && next < hi_t)) break;
      }
      t = next;
      e = eval(t);
    }
    if (!done) {
      const double mid = 0.5 * (lo_t + hi_t);
      e = eval(mid);
      lam = e.c > 0.0 ? (e.b - eps) / e.c : mid;
    }
    lam = fmax(lam, 0.0);
  }

  // d = sign(v) clip(|v| - lam, 0, u); out = clamp(x0 + d, lo, hi) in float64.
  for (int64_t i = threadIdx.x; i < n; i += kBlock) {
    float x0i;
    const float v = v_of(i, x0i);
    const double mag = fmin(fmax(fabs(static_cast<double>(v)) - lam, 0.0), S.room(v, x0i));
    const double y = fmin(fmax(static_cast<double>(x0i) + copysign(mag, static_cast<double>(v)), lo), hi);
    out[i] = from_f<T>(static_cast<float>(y));
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T>
cudaError_t launch_typed(const StepParams& p, Norm norm, int num_sms, cudaStream_t stream) {
  const T* x = static_cast<const T*>(p.x);
  const T* x0 = static_cast<const T*>(p.x0);
  const T* g = static_cast<const T*>(p.g);
  T* out = static_cast<T*>(p.out);
  const float step_f = static_cast<float>(p.step), eps_f = static_cast<float>(p.eps);
  const float lo_f = static_cast<float>(p.lo), hi_f = static_cast<float>(p.hi);
  const bool aligned = aligned16(x) && aligned16(x0) && aligned16(g) && aligned16(out);
  constexpr int P = Pack<T>::kSize;
  const unsigned int samples = static_cast<unsigned int>(p.batch);
  switch (norm) {
    case Norm::Linf: {
      const int64_t total = p.batch * p.n;
      const int64_t work = aligned ? total / P + total % P : total;
      int64_t blocks = (work + kBlock - 1) / kBlock;
      const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * 16;
      blocks = blocks < 1 ? 1 : (blocks > cap ? cap : blocks);
      linf_kernel<T><<<static_cast<unsigned int>(blocks), kBlock, 0, stream>>>(
          x, x0, g, out, total, aligned, step_f, eps_f, lo_f, hi_f);
      break;
    }
    case Norm::L2: {
      const bool packed = aligned && p.n % P == 0;
      const int64_t npack = p.n / P;
      const bool regs = packed && p.l2_in_registers;  // l2_regs_kernel's tiers, smallest first
      if (regs && npack <= 128 * 2) {
        l2_regs_kernel<T, 128, 2><<<samples, 128, 0, stream>>>(x, x0, g, out, p.n, step_f, p.step,
                                                                p.eps, lo_f, hi_f);
      } else if (regs && npack <= kBlock * 2) {
        l2_regs_kernel<T, kBlock, 2><<<samples, kBlock, 0, stream>>>(x, x0, g, out, p.n, step_f,
                                                                     p.step, p.eps, lo_f, hi_f);
      } else if (regs && npack <= kBlock * 4) {
        l2_regs_kernel<T, kBlock, 4><<<samples, kBlock, 0, stream>>>(x, x0, g, out, p.n, step_f,
                                                                     p.step, p.eps, lo_f, hi_f);
      } else if (packed) {
        l2_kernel<T, true><<<samples, kBlock, 0, stream>>>(x, x0, g, out, p.n, step_f, p.step,
                                                            p.eps, lo_f, hi_f);
      } else {
        l2_kernel<T, false><<<samples, kBlock, 0, stream>>>(x, x0, g, out, p.n, step_f, p.step,
                                                             p.eps, lo_f, hi_f);
      }
      break;
    }
    case Norm::L1:
      l1_kernel<T><<<samples, kBlock, 0, stream>>>(x, x0, g, out, p.n, p.k, step_f, p.eps, lo_f,
                                                   hi_f, p.lo, p.hi);
      break;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_pgd_step(const StepParams& p, DType dtype, Norm norm, int num_sms,
                            cudaStream_t stream) {
  if (p.batch <= 0 || p.n <= 0) return cudaSuccess;
  if (p.batch > 0x7fffffffLL) return cudaErrorInvalidValue;  // one block per sample (grid.x)
  switch (dtype) {
    case DType::Float32:
      return launch_typed<float>(p, norm, num_sms, stream);
    case DType::Float16:
      return launch_typed<__half>(p, norm, num_sms, stream);
    case DType::BFloat16:
      return launch_typed<__nv_bfloat16>(p, norm, num_sms, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace manifoldadv::cuda
