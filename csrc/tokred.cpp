// The tokred operator library: its schemas (schemas.h) and the Python module that loads it.
#include <Python.h>
#include <torch/library.h>

#include "schemas.h"

// `import tokred._C` loads this library, which registers the operators below; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(tokred, m) { tokred::define_ops(m); }
