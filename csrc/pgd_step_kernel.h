// PGD step kernels over raw float32 pointers, written with at::vec so that one source serves
// every CPU capability. Include once per capability, after defining CPU_CAPABILITY (see
// cpu_kernels.h). Semantics are those of manifoldadv/ops.py (pgd_step_reference), coordinate for
// coordinate: the same float32 operations in the same order where the reference is float32,
// float64 where it is float64.
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

using fVec = at::vec::Vectorized<float>;
using dVec = at::vec::Vectorized<double>;
constexpr int64_t kF = fVec::size();
constexpr int64_t kD = dVec::size();
static_assert(kF == 2 * kD, "a float vector must widen into two double vectors");

// Non-finite gradient entries count as zero: g - g is NaN exactly for inf and NaN.
inline fVec finite_or_zero(const fVec& g) {
  return g & ((g - g) == fVec(0.0f));
}

// step * sign(g): +step, -step or 0 (or -0, as torch gives for step*sign(g) with step = 0).
inline fVec signed_step(const fVec& g, float step) {
  const fVec zero(0.0f);
  return ((g > zero) & fVec(step)) | ((g < zero) & fVec(-step));
}

inline void widen(const fVec& v, dVec& lo, dVec& hi) {
#if defined(CPU_CAPABILITY_AVX2)
  const __m256 r = v;
  lo = dVec(_mm256_cvtps_pd(_mm256_castps256_ps128(r)));
  hi = dVec(_mm256_cvtps_pd(_mm256_extractf128_ps(r, 1)));
#else
  float f[kF];
  double d[kF];
  v.store(f);
  for (int64_t i = 0; i < kF; ++i) d[i] = f[i];
  lo = dVec::loadu(d);
  hi = dVec::loadu(d + kD);
#endif
}

inline double hsum(const dVec& v) {
  double t[kD];
  v.store(t);
  double s = 0.0;
  for (int64_t i = 0; i < kD; ++i) s += t[i];
  return s;
}

// Elements to process one by one before out + i is aligned for a (streaming) vector store.
inline int64_t head_to_align(const float* out, int64_t i, int64_t end, bool stream) {
  if (!stream) return i;
  const auto addr = reinterpret_cast<uintptr_t>(out + i);
  const int64_t skip = static_cast<int64_t>(((kF * 4) - addr % (kF * 4)) % (kF * 4)) / 4;
  return std::min(end, i + skip);
}

inline void store_out(float* p, const fVec& v, bool stream) {
#if defined(CPU_CAPABILITY_AVX2)
  if (stream) {  // p is aligned (head_to_align)
    _mm256_stream_ps(p, v);
    return;
  }
#endif
  v.store(p);
}

inline void stream_fence(bool stream) {
#if defined(CPU_CAPABILITY_AVX2)
  if (stream) _mm_sfence();  // order the non-temporal stores before the caller's next access
#endif
  (void)stream;
}

// out[i0, i1) = f(x, x0, g) elementwise; f maps three float vectors to one.
template <typename F>
inline void map3(const float* x, const float* x0, const float* g, float* out, int64_t i0,
                 int64_t i1, bool stream, const F& f) {
  int64_t i = i0;
  const int64_t aligned = head_to_align(out, i0, i1, stream);
  if (aligned > i) {
    const int64_t r = aligned - i;
    f(fVec::loadu(x + i, r), fVec::loadu(x0 + i, r), fVec::loadu(g + i, r))
        .store(out + i, static_cast<int>(r));
    i = aligned;
  }
  for (; i + kF <= i1; i += kF) {
    store_out(out + i, f(fVec::loadu(x + i), fVec::loadu(x0 + i), fVec::loadu(g + i)), stream);
  }
  if (i < i1) {
    const int64_t r = i1 - i;
    f(fVec::loadu(x + i, r), fVec::loadu(x0 + i, r), fVec::loadu(g + i, r))
        .store(out + i, static_cast<int>(r));
  }
}

// ------------------------------------------------------------------------------------- linf

void linf_range(const StepArgs& a, int64_t begin, int64_t end) {
  const float step = static_cast<float>(a.step), eps = static_cast<float>(a.eps);
  const fVec lo(static_cast<float>(a.lo)), hi(static_cast<float>(a.hi));
  auto body = [&](const fVec& x, const fVec& x0, fVec g) {
    g = finite_or_zero(g);
    fVec y = x + signed_step(g, step);
    y = at::vec::clamp_max(at::vec::clamp_min(y, x0 - fVec(eps)), x0 + fVec(eps));
    y = at::vec::clamp_max(at::vec::clamp_min(y, lo), hi);
    // (x - x) + (x0 - x0) is 0, or NaN where x or x0 is not finite.
    return y + ((x - x) + (x0 - x0));
  };
  map3(a.x, a.x0, a.g, a.out, begin, end, a.stream_out, body);
  stream_fence(a.stream_out);
}

// --------------------------------------------------------------------------------------- l2

L2Sums l2_sums(const StepArgs& a, int64_t b, int64_t c0, int64_t c1) {
  const float* x = a.x + b * a.n;
  const float* x0 = a.x0 + b * a.n;
  const float* g = a.g + b * a.n;
  dVec gg0(0.0), gg1(0.0), dg0(0.0), dg1(0.0), dd0(0.0), dd1(0.0);
  auto acc = [&](const fVec& xv, const fVec& x0v, const fVec& gv) {
    dVec dl, dh, gl, gh;
    widen(xv - x0v, dl, dh);
    widen(finite_or_zero(gv), gl, gh);
    gg0 = at::vec::fmadd(gl, gl, gg0);
    gg1 = at::vec::fmadd(gh, gh, gg1);
    dg0 = at::vec::fmadd(dl, gl, dg0);
    dg1 = at::vec::fmadd(dh, gh, dg1);
    dd0 = at::vec::fmadd(dl, dl, dd0);
    dd1 = at::vec::fmadd(dh, dh, dd1);
  };
  int64_t i = c0;
  for (; i + kF <= c1; i += kF) acc(fVec::loadu(x + i), fVec::loadu(x0 + i), fVec::loadu(g + i));
  if (i < c1) {
    const int64_t r = c1 - i;  // loadu(ptr, count) zero-fills the rest: zeros add nothing
    acc(fVec::loadu(x + i, r), fVec::loadu(x0 + i, r), fVec::loadu(g + i, r));
  }
  L2Sums s;
  s.gg = hsum(gg0 + gg1);
  s.dg = hsum(dg0 + dg1);
  s.dd = hsum(dd0 + dd1);
  return s;
}

void l2_write(const StepArgs& a, int64_t b, int64_t c0, int64_t c1, float inv_gn, float scale,
              bool nan) {
  const float* x = a.x + b * a.n;
  const float* x0 = a.x0 + b * a.n;
  const float* g = a.g + b * a.n;
  float* out = a.out + b * a.n;
  if (nan) {
    std::fill(out + c0, out + c1, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  const fVec lo(static_cast<float>(a.lo)), hi(static_cast<float>(a.hi));
  const fVec step(static_cast<float>(a.step)), inv(inv_gn), sc(scale);
  // As the reference: t = x + step*(g/||g||); y = clamp(x0 + (t - x0)*scale, lo, hi).
  auto body = [&](const fVec& xv, const fVec& x0v, const fVec& gv) {
    const fVec t = xv + step * (finite_or_zero(gv) * inv);
    const fVec y = x0v + (t - x0v) * sc;
    return at::vec::clamp_max(at::vec::clamp_min(y, lo), hi);
  };
  map3(x, x0, g, out, c0, c1, a.stream_out, body);
  stream_fence(a.stream_out);
}

// --------------------------------------------------------------------------------------- l1
//
// Per sample:
// (A) |g| with non-finite entries and outward-pushing box coordinates zeroed (vectorised).
// (B) SLIDE threshold = the k-th largest |g|, by radix selection: |g| >= 0, so its float bits
//     order like the values; one histogram pass over the top 10 bits (half-octaves) finds the
//     bin holding the k-th largest, and std::nth_element finishes on the values at or above
//     that bin's lower edge (about k + n/50 values for Gaussian-like gradients). O(n), no sort.
//     count = #{|g| >= threshold, |g| > 0}, ties included.
// (C) v = (x - x0) + step*sign(g)/count on the moved coordinates, in float32 like the reference.
// (D) The exact Euclidean projection of v onto {||d||_1 <= eps} ∩ box:
//       d_i = sign(v_i) * clip(|v_i| - lam, 0, u_i),  u_i = room to the box in v_i's direction;
//     F(lam) = sum_i clip(|v_i| - lam, 0, u_i) is continuous, piecewise linear, non-increasing,
//     and lam solves F(lam) = eps (lam = 0 when the box alone gives F(0) <= eps).
//     lam is found by BISECTION on a bracket [lo, hi] with F(lo) > eps >= F(hi), accelerated by
//     Newton steps, NOT by sorting the 2n breakpoints: one branch-free vectorised float64 pass at
//     a point t gives F(t) and the linear piece through t (n_active, S = sum_active |v_i| +
//     sum_saturated u_i), whose root (S - eps)/n_active is the Newton iterate. When that root is
//     t itself, t lies on the piece that contains the solution and is EXACT (up to rounding);
//     typical samples need 4-6 passes, against ~log2(n) + 2 for plain bisection to isolate the
//     piece (64 in the reference) and O(n log n) plus a buffer of 2n values for a sort. A
//     Newton iterate outside the bracket is replaced by a bisection step, and so is the step
//     after a Newton step that failed to halve |F - eps|, so the bracket at least halves every
//     two passes whatever the shape of F; if it collapses to adjacent doubles, lam comes from
//     the active set at its midpoint, exactly as the reference's "bisection + exact finish". Passes
//     run over the nonzero |v_i| only when those are few (l1 iterates are sparse), else over
//     all n (zeros contribute nothing). The CUDA kernel runs the same iteration with one block
//     reduction per pass.

constexpr int kHistBits = 10;  // sign (always 0), 8 exponent bits, 1 mantissa bit
constexpr int kHistShift = 32 - kHistBits;
constexpr int64_t kHistBins = int64_t{1} << kHistBits;
constexpr int kAllLanes = (1 << kF) - 1;

struct L1Scratch {
  std::vector<float> a, v, cand;
  std::vector<double> av, u;
  std::vector<uint32_t> hist;
  explicit L1Scratch(int64_t n)
      : a(static_cast<size_t>(n + kF)), v(static_cast<size_t>(n + kF)), cand(static_cast<size_t>(n)),
        av(static_cast<size_t>(n + kF)), u(static_cast<size_t>(n + kF)),
        hist(static_cast<size_t>(4 * kHistBins)) {}
};

inline uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

inline float bits_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

// k-th largest of a[0..n) (all >= 0 and finite; a is padded to whole vectors) and
// count = #{a_i >= it, a_i > 0}.
inline float kth_largest(const float* a, int64_t n, int64_t k, L1Scratch& sc, int64_t& count) {
  if (k == n) {  // every coordinate: the threshold is the minimum
    float thr = std::numeric_limits<float>::infinity();
    int64_t i = 0;
    if (n >= kF) {
      fVec mn = fVec::loadu(a);
      for (i = kF; i + kF <= n; i += kF) mn = at::vec::minimum(mn, fVec::loadu(a + i));
      float t[kF];
      mn.store(t);
      for (int64_t j = 0; j < kF; ++j) thr = std::min(thr, t[j]);
    }
    for (; i < n; ++i) thr = std::min(thr, a[i]);
    count = 0;
    for (int64_t j = 0; j < n; ++j) count += a[j] > 0.0f;
    return thr;
  }
  // Four interleaved histograms, so that runs of equal bins do not serialise on one counter.
  uint32_t* h = sc.hist.data();
  std::fill(h, h + 4 * kHistBins, 0u);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    ++h[float_bits(a[i]) >> kHistShift];
    ++h[kHistBins + (float_bits(a[i + 1]) >> kHistShift)];
    ++h[2 * kHistBins + (float_bits(a[i + 2]) >> kHistShift)];
    ++h[3 * kHistBins + (float_bits(a[i + 3]) >> kHistShift)];
  }
  for (; i < n; ++i) ++h[float_bits(a[i]) >> kHistShift];
  int64_t above = 0;  // values in bins above `bin`: larger than any value in it
  int64_t bin = kHistBins - 1;
  for (; bin > 0; --bin) {
    const int64_t c = int64_t{h[bin]} + h[kHistBins + bin] + h[2 * kHistBins + bin] +
                      h[3 * kHistBins + bin];
    if (above + c >= k) break;
    above += c;
  }
  // Candidates: every value at or above the lower edge of that bin (k <= #candidates).
  const float edge = bits_float(static_cast<uint32_t>(bin) << kHistShift);
  const fVec vedge(edge);
  float* cand = sc.cand.data();
  int64_t m = 0;
  for (i = 0; i < n; i += kF) {
    const int below = (fVec::loadu(a + i) >= vedge).zero_mask();  // bit set: lane < edge
    if (below == kAllLanes) continue;
    const int64_t r = std::min<int64_t>(kF, n - i);
    for (int64_t j = 0; j < r; ++j) {
      if (!((below >> j) & 1)) cand[m++] = a[i + j];
    }
  }
  std::nth_element(cand, cand + (m - k), cand + m);
  const float thr = cand[m - k];
  count = 0;
  for (int64_t j = 0; j < m; ++j) count += (cand[j] >= thr) & (cand[j] > 0.0f);
  return thr;
}

struct Piece {
  double f = 0.0;     // F(t)
  double s = 0.0;     // sum_active |v_i| + sum_saturated u_i
  double nact = 0.0;  // #active: |v_i| - u_i < t < |v_i|
};

// One pass at t over m entries, zero-padded to a multiple of kD (a = u = 0 adds nothing).
inline Piece eval_piece(const double* av, const double* u, int64_t m, double t) {
  const dVec zero(0.0), one(1.0), vt(t);
  dVec f(0.0), s(0.0), na(0.0);
  for (int64_t j = 0; j < m; j += kD) {
    const dVec a = dVec::loadu(av + j), uu = dVec::loadu(u + j);
    const dVec r = a - vt;
    const dVec sat = r >= uu;
    const dVec act = (r > zero) & (r < uu);
    f = f + at::vec::minimum(at::vec::clamp_min(r, zero), uu);
    s = s + ((a & act) | (uu & sat));
    na = na + (one & act);
  }
  return Piece{hsum(f), hsum(s), hsum(na)};
}

// lam >= 0 with F(lam) = eps, given F(0) > eps and F(vmax) = 0.
double l1_threshold(const double* av, const double* u, int64_t m, double vmax, double eps) {
  double lo = 0.0, hi = vmax;
  double t = 0.0;
  Piece e = eval_piece(av, u, m, t);
  double resid_before = std::numeric_limits<double>::infinity();
  bool last_newton = false;
  for (int it = 0; it < 200; ++it) {
    if (e.f > eps) {
      lo = t;
    } else {
      hi = t;
    }
    const double root = e.nact > 0.0 ? (e.s - eps) / e.nact : -1.0;
    if (root == t) return std::max(t, 0.0);  // t solves the linear piece it lies on
    // A Newton step that did not halve |F - eps| is followed by a bisection step, so the
    // bracket at least halves every second pass whatever the shape of F.
    const double resid = std::fabs(e.f - eps);
    const bool stalled = last_newton && resid > 0.5 * resid_before;
    resid_before = resid;
    double next = root;
    last_newton = !stalled && root > lo && root < hi;
    if (!last_newton) {
      next = 0.5 * (lo + hi);
      if (!(next > lo && next < hi)) break;  // bracket is two adjacent doubles
    }
    t = next;
    e = eval_piece(av, u, m, t);
  }
  // Collapsed bracket: the active set at its midpoint gives lam, as in the reference.
  const double mid = 0.5 * (lo + hi);
  e = eval_piece(av, u, m, mid);
  return std::max(e.nact > 0.0 ? (e.s - eps) / e.nact : mid, 0.0);
}

inline fVec narrow(const dVec& lo, const dVec& hi) {
#if defined(CPU_CAPABILITY_AVX2)
  const __m128 l = _mm256_cvtpd_ps(lo), h = _mm256_cvtpd_ps(hi);
  return fVec(_mm256_insertf128_ps(_mm256_castps128_ps256(l), h, 1));
#else
  double d[kF];
  float f[kF];
  lo.store(d);
  hi.store(d + kD);
  for (int64_t i = 0; i < kF; ++i) f[i] = static_cast<float>(d[i]);
  return fVec::loadu(f);
#endif
}

void l1_samples(const StepArgs& args, int64_t b0, int64_t b1) {
  const int64_t n = args.n;
  const int64_t nv = (n + kF - 1) / kF * kF;  // scratch length, padded to whole vectors
  L1Scratch sc(n);
  const float lo_f = static_cast<float>(args.lo), hi_f = static_cast<float>(args.hi);
  const double lo = args.lo, hi = args.hi, eps = args.eps;
  const fVec vlo(lo_f), vhi(hi_f), zero(0.0f), one_f(1.0f);
  const dVec dlo(lo), dhi(hi), dzero(0.0), dsign(-0.0);
  // The gradient after dropping non-finite and outward-pushing coordinates.
  auto clean_grad = [&](const fVec& xv, fVec gv) {
    gv = finite_or_zero(gv);
    const fVec out = ((xv >= vhi) & (gv > zero)) | ((xv <= vlo) & (gv < zero));
    return fVec::blendv(gv, zero, out);
  };
  // Room to the box in the direction of v: hi - x0 if v > 0 else x0 - lo, at least 0.
  auto room = [&](const dVec& v, const dVec& x0) {
    return at::vec::clamp_min(dVec::blendv(x0 - dlo, dhi - x0, v > dzero), dzero);
  };
  float* a = sc.a.data();
  float* v = sc.v.data();
  double* av = sc.av.data();
  double* u = sc.u.data();
  for (int64_t b = b0; b < b1; ++b) {
    const float* x = args.x + b * n;
    const float* x0 = args.x0 + b * n;
    const float* g = args.g + b * n;
    float* out = args.out + b * n;

    // (A) |g| into scratch; (x - x) + (x0 - x0) flags a non-finite sample.
    fVec bad(0.0f);
    for (int64_t i = 0; i < n; i += kF) {
      const int64_t r = std::min<int64_t>(kF, n - i);
      const fVec xv = fVec::loadu(x + i, r), x0v = fVec::loadu(x0 + i, r);
      clean_grad(xv, fVec::loadu(g + i, r)).abs().store(a + i, static_cast<int>(r));
      bad = bad + ((xv - xv) + (x0v - x0v));
    }
    {
      float t[kF];
      bad.store(t);
      bool finite = true;
      for (int64_t j = 0; j < kF; ++j) finite = finite && t[j] == 0.0f;
      if (!finite) {
        std::fill(out, out + n, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
    }

    // (B) SLIDE threshold and count; the reference's step * sign(g) * mask / count in float32.
    int64_t count = 0;
    const float thr = kth_largest(a, n, args.k, sc, count);
    const float s = static_cast<float>(args.step) / static_cast<float>(std::max<int64_t>(count, 1));
    const fVec vthr(thr);

    // (C) v = (x - x0) + s*sign(g) on the moved coordinates; count the nonzeros.
    fVec nnz_v(0.0f);
    for (int64_t i = 0; i < n; i += kF) {
      const int64_t r = std::min<int64_t>(kF, n - i);
      const fVec xv = fVec::loadu(x + i, r), x0v = fVec::loadu(x0 + i, r);
      const fVec gc = clean_grad(xv, fVec::loadu(g + i, r));
      const fVec ag = gc.abs();
      const fVec moved = (ag >= vthr) & (ag > zero);
      const fVec vv = (xv - x0v) + (signed_step(gc, s) & moved);
      vv.store(v + i);  // scratch is padded: the tail lanes are zeros (loadu zero-fills)
      nnz_v = nnz_v + (one_f & (vv != zero));
    }
    int64_t nnz = 0;
    {
      float t[kF];
      nnz_v.store(t);
      for (int64_t j = 0; j < kF; ++j) nnz += static_cast<int64_t>(t[j]);
    }

    // (D) |v| and room u (float64, as the reference's projection), F(0) and max |v|.
    int64_t m = 0;
    double clipped = 0.0, vmax = 0.0;
    if (nnz * 8 < n) {  // sparse: compact the nonzeros, skipping all-zero vectors
      for (int64_t j = 0; j < n; ++j) {
        if (j % kF == 0 && fVec::loadu(v + j).zero_mask() == kAllLanes) {
          j += kF - 1;
          continue;
        }
        if (v[j] != 0.0f) {
          const double vj = v[j], x0j = x0[j];
          const double aj = std::fabs(vj);
          const double uj = std::max(vj > 0.0 ? hi - x0j : x0j - lo, 0.0);
          av[m] = aj;
          u[m] = uj;
          ++m;
          clipped += std::min(aj, uj);
          vmax = std::max(vmax, aj);
        }
      }
      for (int64_t j = m; j < m + kD; ++j) av[j] = u[j] = 0.0;
    } else {  // dense: all n coordinates, vectorised
      dVec cl(0.0), mx(0.0);
      for (int64_t i = 0; i < n; i += kF) {
        const int64_t r = std::min<int64_t>(kF, n - i);
        dVec vl, vh, xl, xh;
        widen(fVec::loadu(v + i), vl, vh);
        widen(fVec::loadu(x0 + i, r), xl, xh);
        const dVec al = vl.abs(), ah = vh.abs();
        // padding lanes: v = 0 there, so av = 0 and they add nothing
        const dVec ul = room(vl, xl), uh = room(vh, xh);
        al.store(av + i);
        ah.store(av + i + kD);
        ul.store(u + i);
        uh.store(u + i + kD);
        cl = cl + at::vec::minimum(al, ul) + at::vec::minimum(ah, uh);
        mx = at::vec::maximum(mx, at::vec::maximum(al, ah));
      }
      m = nv;
      clipped = hsum(cl);
      double t[kD];
      mx.store(t);
      for (int64_t j = 0; j < kD; ++j) vmax = std::max(vmax, t[j]);
    }

    const double lam = clipped > eps ? l1_threshold(av, u, m, vmax, eps) : 0.0;

    // d = sign(v) clip(|v| - lam, 0, u); out = clamp(x0 + d, lo, hi) in float64, then float32.
    const dVec vlam(lam);
    for (int64_t i = 0; i < n; i += kF) {
      const int64_t r = std::min<int64_t>(kF, n - i);
      dVec vl, vh, xl, xh;
      widen(fVec::loadu(v + i), vl, vh);
      widen(fVec::loadu(x0 + i, r), xl, xh);
      auto one_half = [&](const dVec& vd, const dVec& xd) {
        const dVec mag = at::vec::minimum(at::vec::clamp_min(vd.abs() - vlam, dzero), room(vd, xd));
        const dVec d = mag | (vd & dsign);  // copysign(mag, v), mag >= 0
        return at::vec::clamp_max(at::vec::clamp_min(xd + d, dlo), dhi);
      };
      narrow(one_half(vl, xl), one_half(vh, xh)).store(out + i, static_cast<int>(r));
    }
  }
}

}  // namespace
}  // namespace manifoldadv::cpu::CPU_CAPABILITY
