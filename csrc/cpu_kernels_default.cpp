// The CPU kernels for the baseline ISA (at::vec's portable vector type).
#ifndef CPU_CAPABILITY
#define CPU_CAPABILITY DEFAULT
#endif
#include "pgd_step_kernel.h"
#include "attack_engine_kernel.h"
#include "cpu_kernel_table.h"
