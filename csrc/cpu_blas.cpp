// An outside dsyrk for the CPU covariance update, used where it beats torch's own BLAS.
//
// Why: the update's cost is M2 += Y^T Y on one triangle. torch's x86-64 wheels carry MKL but no
// symmetric rank-k product it exports, so the kernel's own path does upper-triangle row-block
// dgemms, which compute the diagonal blocks whole (16% extra products at d = 784, 8% at 3072).
// OpenBLAS's dsyrk skips them at the level of its register tiles and, on the AMD EPYC machine
// the benchmarks ran on, computes 20-25% more useful products per second single-threaded.
// SciPy ships an OpenBLAS and hands out its dsyrk through scipy.linalg.cython_blas, a public
// API for compiled extensions; manifoldadv/ops.py passes that function here.
//
// The update calls dsyrk from several threads at once, one class each, so OpenBLAS must run
// single-threaded meanwhile (a threaded OpenBLAS would start a thread team under every caller;
// measured: twice as slow, with "Detect OpenMP Loop" warnings). OpenBLAS's thread count is one
// process-wide setting (openblas_set_num_threads_local is no different in pthreads builds), so
// only a library whose count can be read and set is accepted, and SingleThreadedOutsideBlas
// sets it to one for the duration of an update and restores it afterwards.
#include "cpu_blas.h"

#include <atomic>
#include <mutex>
#include <string>

#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#define MANIFOLDADV_HAVE_DLADDR 1
#endif

namespace manifoldadv::cpu {
namespace {

struct Provider {
  dsyrk_t dsyrk;
  void (*set_threads)(int);
  int (*get_threads)();
  std::string description;
};

// Providers are never freed: an install is rare and a running update may still hold the old one.
std::atomic<const Provider*> g_provider{nullptr};

// Installs wait for g_users == 0, so every live guard has the provider installed now.
std::mutex g_mu;          // guards the two below and every install
int g_users = 0;          // live SingleThreadedOutsideBlas guards
int g_saved_threads = 0;  // the provider's count before the first of them

}  // namespace

std::string install_dsyrk(void* fn) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_users > 0) return "a covariance update is running";
  if (fn == nullptr) {
    g_provider.store(nullptr);
    return "";
  }
#ifdef MANIFOLDADV_HAVE_DLADDR
  Dl_info info{};
  if (dladdr(fn, &info) == 0 || info.dli_fname == nullptr) return "dladdr found no library for it";
  // RTLD_NOLOAD: the library is loaded already; this only takes a handle whose lookups search it
  // and the libraries it depends on (SciPy's cython_blas module links its OpenBLAS).
  void* lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (lib == nullptr) return std::string("dlopen(RTLD_NOLOAD) failed for ") + info.dli_fname;
  struct Names {
    const char *set, *get, *config;
  };
  // SciPy's wheels prefix every OpenBLAS symbol with scipy_; system builds do not; 64_ marks the
  // ILP64 builds (the thread functions take int either way).
  const Names candidates[] = {
      {"scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads",
       "scipy_openblas_get_config"},
      {"scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_",
       "scipy_openblas_get_config64_"},
      {"openblas_set_num_threads", "openblas_get_num_threads", "openblas_get_config"},
      {"openblas_set_num_threads64_", "openblas_get_num_threads64_", "openblas_get_config64_"},
  };
  for (const Names& n : candidates) {
    void* set = dlsym(lib, n.set);
    void* get = dlsym(lib, n.get);
    if (set == nullptr || get == nullptr) continue;
    std::string description = "OpenBLAS";
    if (void* config = dlsym(lib, n.config)) {
      const char* text = reinterpret_cast<const char* (*)()>(config)();
      if (text != nullptr) description = text;
    }
    g_provider.store(new Provider{reinterpret_cast<dsyrk_t>(fn),
                                  reinterpret_cast<void (*)(int)>(set),
                                  reinterpret_cast<int (*)()>(get), description});
    return "";
  }
  return std::string("no OpenBLAS thread control (") + candidates[0].set + " or " +
         candidates[2].set + ") in " + info.dli_fname + " or the libraries it links";
#else
  return "finding the BLAS library of a function is not supported on this platform";
#endif
}

dsyrk_t outside_dsyrk() {
  const Provider* p = g_provider.load();
  return p != nullptr ? p->dsyrk : nullptr;
}

std::string outside_dsyrk_description() {
  const Provider* p = g_provider.load();
  return p != nullptr ? p->description : std::string();
}

int outside_dsyrk_threads() {
  const Provider* p = g_provider.load();
  return p != nullptr ? p->get_threads() : -1;
}

SingleThreadedOutsideBlas::SingleThreadedOutsideBlas() {
  std::lock_guard<std::mutex> lock(g_mu);
  const Provider* p = g_provider.load();
  if (p == nullptr) return;
  if (g_users++ == 0) {
    g_saved_threads = p->get_threads();
    if (g_saved_threads != 1) p->set_threads(1);
  }
  active_ = true;
}

SingleThreadedOutsideBlas::~SingleThreadedOutsideBlas() {
  if (!active_) return;
  std::lock_guard<std::mutex> lock(g_mu);
  if (--g_users == 0 && g_saved_threads != 1) g_provider.load()->set_threads(g_saved_threads);
}

}  // namespace manifoldadv::cpu
