// An optional outside dsyrk for the CPU covariance products (see cpu_blas.cpp).
#pragma once

#include <string>

namespace manifoldadv::cpu {

// Fortran BLAS dsyrk: C := alpha op(A) op(A)^T + beta C on one triangle of column-major C.
using dsyrk_t = void (*)(const char* uplo, const char* trans, const int* n, const int* k,
                         const double* alpha, const double* a, const int* lda, const double* beta,
                         double* c, const int* ldc);

// Installs fn as the dsyrk of class_cov_update_ (nullptr removes it). Refused, with the reason
// returned, unless fn's library is an OpenBLAS whose thread count can be read and set.
// Returns "" when installed.
std::string install_dsyrk(void* fn);

// The installed dsyrk, or nullptr.
dsyrk_t outside_dsyrk();

// "OpenBLAS <its config string>" for the installed dsyrk, "" when none.
std::string outside_dsyrk_description();

// The installed provider's thread count (-1 when none is installed).
int outside_dsyrk_threads();

// While one of these lives, the installed provider runs single-threaded: the covariance update
// calls it from several threads at once and a multi-threaded OpenBLAS would start its own
// thread team under each of them. Process-wide and counted, so overlapping updates restore the
// caller's setting only when the last one ends. Does nothing when no dsyrk is installed.
class SingleThreadedOutsideBlas {
 public:
  SingleThreadedOutsideBlas();
  ~SingleThreadedOutsideBlas();
  SingleThreadedOutsideBlas(const SingleThreadedOutsideBlas&) = delete;
  SingleThreadedOutsideBlas& operator=(const SingleThreadedOutsideBlas&) = delete;

 private:
  bool active_ = false;
};

}  // namespace manifoldadv::cpu
