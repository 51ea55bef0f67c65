// The CPU kernels for AVX2 + FMA. setup.py compiles this file alone with
// -mavx2 -mfma -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2 and links it after every other
// object; csrc/pgd_step_cpu.cpp calls it only when at::get_cpu_capability() reports AVX2 or
// better. Nothing here runs at load time (no static initialisers), so loading the library on a
// CPU without AVX2 is safe.
#if !defined(CPU_CAPABILITY_AVX2)
#error "cpu_kernels_avx2.cpp must be compiled with -mavx2 -mfma -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2"
#endif
#include "pgd_step_kernel.h"
#include "attack_engine_kernel.h"
#include "cpu_kernel_table.h"
