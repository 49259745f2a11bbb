// The operator contract: every schema of the tokred namespace, in one place.
// Kernels live in cpu/<op>.cpp and cuda/<op>.cu; Python wrappers, fake kernels and autograd in tokred/ops.py.
#include <Python.h>
#include <torch/library.h>

// `import tokred._C` loads this library, which registers the operators below; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(tokred, m) {
  m.def("ats_sample(Tensor scores, Tensor mask, int num_samples, str rule) -> (Tensor, Tensor, Tensor)");
  m.def("dpc_knn(Tensor x, int num_clusters, int k_neighbors, Tensor? mask, Tensor? noise) -> (Tensor, Tensor)");
  m.def("kmedoids(Tensor x, Tensor weights, int num_clusters, int iters, str rule) -> (Tensor, Tensor)");
  m.def("sinkhorn(Tensor scores, float eps, int iters, str marginals) -> (Tensor, Tensor, Tensor)");
  m.def("sinkhorn_backward(Tensor grad_plan, Tensor scores, Tensor u, Tensor v, float eps, str marginals) -> Tensor");
}
