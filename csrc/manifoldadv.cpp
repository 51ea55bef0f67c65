// Schemas of every manifoldadv op, and the empty Python module whose import registers them.
// Backends live in one file each: *_cpu.cpp (TORCH_LIBRARY_IMPL CPU) and cuda/*_cuda.cpp.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu_blas.h"

namespace manifoldadv::cpu {
const char* active_kernel_name();  // pgd_step_cpu.cpp
}

namespace {
// _C.cpu_isa() -> "avx2" | "default": the CPU kernel table in use (tests, `info`).
PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(manifoldadv::cpu::active_kernel_name());
}

// The C signatures SciPy's Cython BLAS API gives its dsyrk capsule (Cython names the capsule
// after the function's type; d is its typedef of double).
bool is_dsyrk_signature(const char* name) {
  for (const char* d : {"__pyx_t_5scipy_6linalg_11cython_blas_d", "double"}) {
    const std::string p = std::string(d) + " *";
    const std::string sig = "void (char *, char *, int *, int *, " + p + ", " + p + ", int *, " +
                            p + ", " + p + ", int *)";
    if (sig == name) return true;
  }
  return false;
}

// _C.use_dsyrk(capsule | None) -> str: installs the dsyrk in the capsule (scipy.linalg.
// cython_blas.__pyx_capi__["dsyrk"]) for the CPU covariance update, None removes it. Returns ""
// when done, else why it was refused.
PyObject* use_dsyrk(PyObject*, PyObject* arg) {
  void* fn = nullptr;
  if (arg != Py_None) {
    if (!PyCapsule_CheckExact(arg)) {
      PyErr_SetString(PyExc_TypeError, "use_dsyrk takes a PyCapsule or None");
      return nullptr;
    }
    const char* name = PyCapsule_GetName(arg);
    if (name == nullptr || !is_dsyrk_signature(name)) {
      return PyUnicode_FromFormat("the capsule is not a Fortran dsyrk with int arguments (it is %s)",
                                  name != nullptr ? name : "unnamed");
    }
    fn = PyCapsule_GetPointer(arg, name);
    if (fn == nullptr) return nullptr;
  }
  std::string why;
  Py_BEGIN_ALLOW_THREADS  // install waits for running updates' lock
  why = manifoldadv::cpu::install_dsyrk(fn);
  Py_END_ALLOW_THREADS
  return PyUnicode_FromString(why.c_str());
}

// _C.dsyrk_info() -> (description | None, threads): the installed dsyrk's library and its
// current thread count (-1 when none is installed).
PyObject* dsyrk_info(PyObject*, PyObject*) {
  if (manifoldadv::cpu::outside_dsyrk() == nullptr) return Py_BuildValue("(Oi)", Py_None, -1);
  const std::string d = manifoldadv::cpu::outside_dsyrk_description();
  return Py_BuildValue("(si)", d.c_str(), manifoldadv::cpu::outside_dsyrk_threads());
}

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "CPU kernel table in use: 'avx2' or 'default'."},
    {"use_dsyrk", use_dsyrk, METH_O,
     "Install (capsule) or remove (None) an outside dsyrk for the CPU covariance update; "
     "returns '' or why it was refused."},
    {"dsyrk_info", dsyrk_info, METH_NOARGS,
     "(library description or None, its thread count or -1) of the installed dsyrk."},
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
  m.def(
      "fused_attack(Tensor x0, Tensor y, Tensor x, Tensor[] params, int[] layers, int steps, "
      "float step, float eps, str norm, float lo, float hi, float l1_quantile, bool logits) "
      "-> (Tensor, Tensor)");
  m.def(
      "attack_input_grad(Tensor x, Tensor y, Tensor[] params, int[] layers) -> (Tensor, Tensor)");
}
