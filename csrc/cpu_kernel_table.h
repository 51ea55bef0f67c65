// The kernel table of one CPU capability: included last by cpu_kernels_default.cpp and
// cpu_kernels_avx2.cpp, after the kernel headers whose functions it lists.
#pragma once

#include "cpu_kernels.h"

namespace manifoldadv::cpu::CPU_CAPABILITY {

const Kernels& kernels() {
  static const Kernels table{
#if defined(CPU_CAPABILITY_AVX2)
      "avx2",
#else
      "default",
#endif
      &linf_range, &l2_sums, &l2_write, &l1_samples, &engine_tiles};
  return table;
}

}  // namespace manifoldadv::cpu::CPU_CAPABILITY
