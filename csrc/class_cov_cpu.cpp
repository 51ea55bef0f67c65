// CPU backend of manifoldadv::class_cov_update_ / class_cov_finalize: streaming per-class
// (count, mean, centred second moment M2) in float64, merged with Chan et al.'s parallel update.
//
// For each class present in a batch (in chunks of max(1024, 2^20 / d) rows, see update_impl):
//   1. the batch mean mb, from float64 sums (exact for float32 features: 24-bit values summed in
//      53 bits);
//   2. Yt = (X_c - mb)^T as a [d, nb (+1)] float64 matrix, built by a tiled transposing gather;
//      when the class already has na rows, one extra column sqrt(na*nb/n) * (mb - mean) makes
//      the GEMM below add Chan's correction term w * delta delta^T as well;
//   3. M2[c] += Yt Yt^T on the UPPER TRIANGLE only: one dsyrk when an outside one is installed
//      (cpu_blas.cpp; SciPy's OpenBLAS) and the call runs on one thread, else row-block GEMMs
//      (BLAS dgemm): for i0 in 0..d step bs: M2[c][i0:i1, i0:d] += Yt[i0:i1] Yt[i0:d]^T, i.e.
//      half the products of a full Y^T Y plus the diagonal blocks. The [d, nb] layout puts the
//      summed dimension contiguous (a "TN" dot-product GEMM), measurably the fastest form for MKL;
//   4. mean += delta * nb / n, count = n.
// With several threads and enough balanced classes the classes are spread over the threads,
// each doing all the steps for its classes with single-threaded BLAS (class-parallel); else
// one class at a time with the threads inside the gather and inside BLAS (at::addmm_).
// Only the upper triangle of M2 is maintained; class_cov_finalize mirrors it and divides by
// n - 1 (NaN for classes with fewer than two rows, like np.cov).
#include "cpu_blas.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

namespace manifoldadv::cpu {
namespace {

void check_state(const char* op, const at::Tensor& counts, const at::Tensor& m2,
                 const at::Tensor* means) {
  TORCH_CHECK(counts.device().is_cpu() && m2.device().is_cpu(), op,
              ": the CPU kernel needs CPU tensors");
  TORCH_CHECK(counts.dim() == 1 && counts.scalar_type() == at::kLong, op,
              ": counts must be a 1-D int64 tensor [C], got ", counts.scalar_type(), " ",
              counts.sizes());
  const int64_t C = counts.size(0);
  TORCH_CHECK(m2.dim() == 3 && m2.scalar_type() == at::kDouble && m2.size(0) == C &&
                  m2.size(1) == m2.size(2),
              op, ": m2 must be a float64 tensor [C, d, d] with C = ", C, ", got ",
              m2.scalar_type(), " ", m2.sizes());
  if (means != nullptr) {
    TORCH_CHECK(means->device().is_cpu(), op, ": the CPU kernel needs CPU tensors");
    TORCH_CHECK(means->dim() == 2 && means->scalar_type() == at::kDouble && means->size(0) == C &&
                    means->size(1) == m2.size(1),
                op, ": means must be a float64 tensor [C, d] = [", C, ", ", m2.size(1),
                "], got ", means->scalar_type(), " ", means->sizes());
    TORCH_CHECK(counts.is_contiguous() && means->is_contiguous() && m2.is_contiguous(), op,
                ": counts, means and m2 must be contiguous (they are updated in place)");
  }
}

// Rows rows[0..nb) of X (one class): mean, then Yt[j, r] = X[rows[r], j] - mean[j].
// One parallel region: each thread owns a range of columns j, sums them over the rows and then
// writes their centred, transposed copy, so no thread waits for another in between.
template <typename scalar_t>
void centred_transpose(const scalar_t* X, int64_t d, const int64_t* rows, int64_t nb,
                       double* mean, double* Yt, int64_t ld) {
  constexpr int64_t kTile = 32;  // rows per tile: their source lines stay in L1
  at::parallel_for(0, d, 64, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(static_cast<size_t>(j1 - j0), 0.0);
    for (int64_t r = 0; r < nb; ++r) {
      const scalar_t* xr = X + rows[r] * d;
      for (int64_t j = j0; j < j1; ++j) acc[j - j0] += static_cast<double>(xr[j]);
    }
    for (int64_t j = j0; j < j1; ++j) mean[j] = acc[j - j0] / static_cast<double>(nb);
    for (int64_t r0 = 0; r0 < nb; r0 += kTile) {
      const int64_t r1 = std::min(nb, r0 + kTile);
      const scalar_t* src[kTile];
      for (int64_t r = r0; r < r1; ++r) src[r - r0] = X + rows[r] * d;
      for (int64_t j = j0; j < j1; ++j) {
        double* dst = Yt + j * ld;
        const double mj = mean[j];
        for (int64_t r = r0; r < r1; ++r) dst[r] = static_cast<double>(src[r - r0][j]) - mj;
      }
    }
  });
}

// upper_gram_ (below) for products too small to be worth BLAS (d * d * K below ~2M
// multiply-adds): plain dot products of the contiguous rows of Yt, on the calling thread. MKL would otherwise start
// its thread team for each tiny GEMM of a stream of small batches, and on a busy machine every
// such start waits for a descheduled thread.
void upper_gram_small_(double* m2c, int64_t d, const double* yt, int64_t ld, int64_t K,
                       bool accumulate) {
  for (int64_t i = 0; i < d; ++i) {
    const double* yi = yt + i * ld;
    for (int64_t j = i; j < d; ++j) {
      const double* yj = yt + j * ld;
      double s0 = 0.0, s1 = 0.0;
      int64_t r = 0;
      for (; r + 2 <= K; r += 2) {
        s0 += yi[r] * yj[r];
        s1 += yi[r + 1] * yj[r + 1];
      }
      if (r < K) s0 += yi[r] * yj[r];
      m2c[i * d + j] = (accumulate ? m2c[i * d + j] : 0.0) + s0 + s1;
    }
  }
}

// BLAS entry points exported by torch's own library (MKL in the x86-64 wheels). Weak, so the
// extension still loads where they are absent; without dgemm_ the update never goes
// class-parallel (see update_impl).
extern "C" {
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
// MKL's C API (mkl_service.h maps mkl_set_num_threads_local to it; the lower-case symbol that
// library exports is the Fortran entry, which takes a pointer).
int MKL_Set_Num_Threads_Local(int n) __attribute__((weak));
}

// How a merge computes its products. on_worker: it runs on a worker of a class-parallel update,
// which has none of the caller's thread-local dispatch state (inference mode etc.), so it must
// not go through the dispatcher, and its BLAS must stay on its own thread. dsyrk: the installed
// outside dsyrk, set only where it runs single-threaded (see update_impl).
struct GramPath {
  bool on_worker = false;
  dsyrk_t dsyrk = nullptr;
};

// M2 (row-major [d, d], row stride d) += Yt Yt^T on the upper triangle (= Yt Yt^T when not
// accumulate: the BLAS calls get beta = 0 and never read M2). With path.dsyrk, one
// call: row-major upper is column-major lower, and Yt row-major [d, ld] is column-major [ld, d],
// so it is dsyrk("L", "T") of the first K rows. Otherwise by row blocks,
// M2[i0:i1, i0:d] += Yt[i0:i1] Yt[i0:d]^T: BLAS dgemm directly on a worker, else at::addmm_,
// whose BLAS uses every thread.
void upper_gram_(double* m2c, int64_t d, const double* yt, int64_t ld, int64_t K, GramPath path,
                 bool accumulate) {
  const double one = 1.0, beta = accumulate ? 1.0 : 0.0;
  const int ik = static_cast<int>(K), ild = static_cast<int>(ld), ildc = static_cast<int>(d);
  if (path.dsyrk != nullptr) {
    path.dsyrk("L", "T", &ildc, &ik, &one, yt, &ild, &beta, m2c, &ildc);
    return;
  }
  const bool on_worker = path.on_worker;
  const int64_t bs = d <= 1024 ? 128 : 256;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor M, Y;
  if (!on_worker) {
    M = at::from_blob(m2c, {d, d}, f64);
    Y = at::from_blob(const_cast<double*>(yt), {d, K}, {ld, 1}, f64);
  }
  for (int64_t i0 = 0; i0 < d; i0 += bs) {
    const int64_t h = std::min(bs, d - i0);
    if (on_worker) {
      // Row-major C = M2[i0:i0+h, i0:d] is the column-major [w, h] matrix C^T = B A^T, with
      // B = Yt[i0:d] and A = Yt[i0:i0+h] row-major [., K], i.e. column-major [K, .].
      const int ih = static_cast<int>(h), iw = static_cast<int>(d - i0);
      dgemm_("T", "N", &iw, &ih, &ik, &one, yt + i0 * ld, &ild, yt + i0 * ld, &ild, &beta,
             m2c + i0 * d + i0, &ildc);
    } else {
      at::Tensor out = M.narrow(0, i0, h).narrow(1, i0, d - i0);
      out.addmm_(Y.narrow(0, i0, h), Y.narrow(0, i0, d - i0).t(), beta, 1.0);
    }
  }
}

// Merges rows[0..count) (all of class c) into the state, in chunks of max_rows rows, each chunk
// one Chan merge. buf holds d * stride(max_rows + 1) doubles, mb d doubles.
template <typename scalar_t>
void merge_class(int64_t c, const scalar_t* x, int64_t d, const int64_t* rows, int64_t count,
                 int64_t max_rows, int64_t* cnt, double* mu, double* m2_data, double* buf,
                 double* mb, GramPath path) {
  double* m2p = m2_data + c * d * d;
  double* muc = mu + c * d;
  for (int64_t r0 = 0; r0 < count; r0 += max_rows) {
    const int64_t nb = std::min(max_rows, count - r0);
    const int64_t na = cnt[c];
    const int64_t n = na + nb;
    const int64_t extra = na > 0 ? 1 : 0;
    const int64_t K = nb + extra;
    const int64_t ld = (K + 7) / 8 * 8;  // every row of Yt starts 64-byte aligned
    centred_transpose<scalar_t>(x, d, rows + r0, nb, mb, buf, ld);
    if (extra) {
      const double w = std::sqrt(static_cast<double>(na) * static_cast<double>(nb) /
                                 static_cast<double>(n));
      for (int64_t j = 0; j < d; ++j) buf[j * ld + nb] = w * (mb[j] - muc[j]);
    }
    // A class's first chunk overwrites its M2 block, so a fresh state needs no zeroed M2
    // (ClassCovariance allocates it empty: its upper triangle is first touched here, by the thread
    // that owns the class, and the lower triangle never).
    if (d * d * K <= (int64_t{1} << 21)) {
      upper_gram_small_(m2p, d, buf, ld, K, na > 0);
    } else {
      upper_gram_(m2p, d, buf, ld, K, path, na > 0);
    }
    const double f = static_cast<double>(nb) / static_cast<double>(n);
    for (int64_t j = 0; j < d; ++j) muc[j] += (mb[j] - muc[j]) * f;
    cnt[c] = n;
  }
}

template <typename scalar_t>
void update_impl(at::Tensor& counts, at::Tensor& means, at::Tensor& m2, const at::Tensor& X,
                 const at::Tensor& labels) {
  const int64_t N = X.size(0), d = X.size(1), C = counts.size(0);
  const scalar_t* x = X.const_data_ptr<scalar_t>();
  const int64_t* lab = labels.const_data_ptr<int64_t>();
  int64_t* cnt = counts.mutable_data_ptr<int64_t>();
  double* mu = means.mutable_data_ptr<double>();
  double* m2_data = m2.mutable_data_ptr<double>();

  // Stable counting sort of the rows by class.
  std::vector<int64_t> start(static_cast<size_t>(C + 1), 0);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t c = lab[i];
    TORCH_CHECK(c >= 0 && c < C, "manifoldadv::class_cov_update_: labels must be in [0, ", C,
                "), got ", c, " at row ", i);
    ++start[c + 1];
  }
  for (int64_t c = 0; c < C; ++c) start[c + 1] += start[c];
  std::vector<int64_t> order(static_cast<size_t>(N));
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < N; ++i) order[fill[lab[i]]++] = i;
  }
  auto rows_of = [&](int64_t c) { return start[c + 1] - start[c]; };

  // Rows are merged in chunks of max(1024, 1M / d) rows: Yt then stays in the last-level cache
  // between its gather and its GEMMs (8 MiB at most unless d > 1024) and one small buffer serves
  // every chunk. Measured here against one chunk per class: 10-15% faster at d = 784 and 3072.
  const int64_t max_rows = std::max<int64_t>(1024, (int64_t{1} << 20) / d);
  std::vector<int64_t> present;
  int64_t widest = 0, largest = 0;
  for (int64_t c = 0; c < C; ++c) {
    if (rows_of(c) == 0) continue;
    present.push_back(c);
    widest = std::max(widest, std::min(max_rows, rows_of(c)));
    largest = std::max(largest, rows_of(c));
  }
  const int64_t buf_len = d * ((widest + 1 + 7) / 8 * 8);

  // Class-parallel when the classes can keep every thread busy: each thread takes whole
  // classes, largest first, and does everything for them itself (gather, single-threaded BLAS,
  // merge), so the threads meet only at the end. Otherwise one class at a time, with the threads
  // inside the gather and inside BLAS, which synchronise at every GEMM (at d = 784 the whole
  // update then runs at ~1.7x of one thread's speed instead of ~2x). Classes at least as many
  // as threads and the largest at most ~1/T of the rows bound the finish times within ~25%.
  const int64_t T = at::get_num_threads();
  // The outside dsyrk wherever each GEMM runs on one thread: class-parallel, or a single thread.
  // While `single` lives no dsyrk can be installed or removed, so `dsyrk` stays valid.
  std::optional<SingleThreadedOutsideBlas> single;
  dsyrk_t dsyrk = nullptr;
  if (outside_dsyrk() != nullptr) {
    single.emplace();
    dsyrk = outside_dsyrk();
  }
  const bool class_parallel = T > 1 && (dgemm_ != nullptr || dsyrk != nullptr) &&
                              !at::in_parallel_region() &&
                              static_cast<int64_t>(present.size()) >= T &&
                              largest * T <= N + N / 4 && d * d * N >= (int64_t{1} << 22);
  GramPath path;
  if (dsyrk != nullptr && (class_parallel || T == 1 || at::in_parallel_region())) {
    path.dsyrk = dsyrk;
  } else {
    single.reset();  // BLAS threads inside each GEMM: leave the outside library as it was
  }
  if (class_parallel) {
    std::sort(present.begin(), present.end(),
              [&](int64_t a, int64_t b) { return rows_of(a) > rows_of(b) || (rows_of(a) == rows_of(b) && a < b); });
    // Scratch allocated here: the workers must not call into the dispatcher.
    std::unique_ptr<double[]> scratch(new double[static_cast<size_t>(T * (buf_len + d))]);
    std::atomic<int64_t> next{0};
    const int64_t P = static_cast<int64_t>(present.size());
    at::parallel_for(0, T, 1, [&](int64_t t0, int64_t) {
      double* buf = scratch.get() + t0 * (buf_len + d);
      const int prev = MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(1) : 0;
      for (int64_t k = next++; k < P; k = next++) {
        const int64_t c = present[k];
        merge_class<scalar_t>(c, x, d, order.data() + start[c], rows_of(c), max_rows, cnt, mu,
                              m2_data, buf, buf + buf_len, GramPath{true, path.dsyrk});
      }
      if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(prev);
    });
    return;
  }
  std::unique_ptr<double[]> scratch(new double[static_cast<size_t>(buf_len + d)]);
  for (int64_t c : present) {
    merge_class<scalar_t>(c, x, d, order.data() + start[c], rows_of(c), max_rows, cnt, mu,
                          m2_data, scratch.get(), scratch.get() + buf_len, path);
  }
}

void class_cov_update_cpu(at::Tensor& counts, at::Tensor& means, at::Tensor& m2,
                          const at::Tensor& features, const at::Tensor& labels) {
  const char* op = "manifoldadv::class_cov_update_";
  check_state(op, counts, m2, &means);
  TORCH_CHECK(features.device().is_cpu() && labels.device().is_cpu(), op,
              ": the CPU kernel needs CPU features and labels");
  TORCH_CHECK(features.dim() == 2 && features.size(1) == m2.size(1), op,
              ": features must be [N, d] with d = ", m2.size(1), ", got ", features.sizes());
  TORCH_CHECK(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble, op,
              ": features must be float32 or float64, got ", features.scalar_type(),
              " (manifoldadv.ops.ClassCovariance widens other dtypes to float32)");
  TORCH_CHECK(labels.dim() == 1 && labels.scalar_type() == at::kLong &&
                  labels.size(0) == features.size(0),
              op, ": labels must be int64 [N] with N = ", features.size(0), ", got ",
              labels.scalar_type(), " ", labels.sizes());
  if (features.size(0) == 0 || features.size(1) == 0) return;
  const at::Tensor X = features.contiguous(), L = labels.contiguous();
  if (X.scalar_type() == at::kFloat) {
    update_impl<float>(counts, means, m2, X, L);
  } else {
    update_impl<double>(counts, means, m2, X, L);
  }
}

at::Tensor class_cov_finalize_cpu(const at::Tensor& counts, const at::Tensor& m2) {
  check_state("manifoldadv::class_cov_finalize", counts, m2, nullptr);
  const at::Tensor M = m2.contiguous(), K = counts.contiguous();
  const int64_t C = M.size(0), d = M.size(1);
  at::Tensor out = at::empty({C, d, d}, M.options());
  if (C == 0 || d == 0) return out;
  const double* src = M.const_data_ptr<double>();
  const int64_t* cnt = K.const_data_ptr<int64_t>();
  double* dst = out.mutable_data_ptr<double>();
  // Task (c, tile row bi) writes whole rows i in bi of the output, front to back: the upper part
  // (j >= i) from row i of M2, the lower part from column i of M2's upper triangle, read in
  // TxT tiles. Each task's writes are one contiguous stretch, so the output's first-touch page
  // faults come in order on each thread (mirroring tile by tile made every task write into
  // pages all over the matrix: 0.26-0.40 s at d = 3072, 10 classes, against 0.25-0.27 s now).
  constexpr int64_t T = 64;
  const int64_t nt = (d + T - 1) / T;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / (T * d));  // ~32k values a task
  at::parallel_for(0, C * nt, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c = t / nt, bi = t % nt;
      const double* s = src + c * d * d;
      double* o = dst + c * d * d;
      const int64_t i0 = bi * T, i1 = std::min(d, i0 + T);
      if (cnt[c] < 2) {
        std::fill(o + i0 * d, o + i1 * d, std::numeric_limits<double>::quiet_NaN());
        continue;
      }
      const double denom = static_cast<double>(cnt[c]) - 1.0;
      for (int64_t j0 = 0; j0 < d; j0 += T) {
        const int64_t j1 = std::min(d, j0 + T);
        for (int64_t i = i0; i < i1; ++i) {
          double* orow = o + i * d;
          const int64_t split = std::clamp(i, j0, j1);  // [j0, split) lower, [split, j1) upper
          for (int64_t j = j0; j < split; ++j) orow[j] = s[j * d + i] / denom;
          for (int64_t j = split; j < j1; ++j) orow[j] = s[i * d + j] / denom;
        }
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace manifoldadv::cpu

TORCH_LIBRARY_IMPL(manifoldadv, CPU, m) {
  m.impl("class_cov_update_", &manifoldadv::cpu::class_cov_update_cpu);
  m.impl("class_cov_finalize", &manifoldadv::cpu::class_cov_finalize_cpu);
}
