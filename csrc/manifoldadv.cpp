// Schemas of every manifoldadv op, and the empty Python module whose import registers them.
// Backends live in one file each: *_cpu.cpp (TORCH_LIBRARY_IMPL CPU) and cuda/*_cuda.cpp.
#include <Python.h>
#include <torch/library.h>

namespace manifoldadv::cpu {
const char* active_kernel_name();  // pgd_step_cpu.cpp
}

namespace {
// _C.cpu_isa() -> "avx2" | "default": the CPU kernel table in use (tests, `info`).
PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(manifoldadv::cpu::active_kernel_name());
}
PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "CPU kernel table in use: 'avx2' or 'default'."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" {
// `import manifoldadv._C` only has to load this library so the registrations below run.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(manifoldadv, m) {
  m.def(
      "pgd_step(Tensor x, Tensor x0, Tensor grad, float step, float eps, str norm, "
      "float lo, float hi, float l1_quantile) -> Tensor");
  m.def(
      "pgd_step_(Tensor(a!) x, Tensor x0, Tensor grad, float step, float eps, str norm, "
      "float lo, float hi, float l1_quantile) -> ()");
  m.def(
      "class_cov_update_(Tensor(a!) counts, Tensor(b!) means, Tensor(c!) m2, "
      "Tensor features, Tensor labels) -> ()");
  m.def("class_cov_finalize(Tensor counts, Tensor m2) -> Tensor");
}
