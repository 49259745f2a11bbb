// The operator contract: every schema of the tokred operators, in one place. TORCH_LIBRARY(tokred) (tokred.cpp)
// defines them; TORCH_LIBRARY(tokred_emu) (emulation/module.cpp) defines the same ones for the emulated CUDA kernels.
// Kernels live in cpu/<op>.cpp and cuda/<op>.cu; Python wrappers, fake kernels and autograd in tokred/ops.py.
#pragma once

#include <torch/library.h>

namespace tokred {

inline void define_ops(torch::Library& m) {
  m.def("ats_sample(Tensor scores, Tensor mask, int num_samples, str rule) -> (Tensor, Tensor, Tensor)");
  m.def("dpc_knn(Tensor x, int num_clusters, int k_neighbors, Tensor? mask, Tensor? noise) -> (Tensor, Tensor)");
  m.def("kmedoids(Tensor x, Tensor weights, int num_clusters, int iters, str rule) -> (Tensor, Tensor)");
  m.def("sinkhorn(Tensor scores, float eps, int iters, str marginals) -> (Tensor, Tensor, Tensor)");
  m.def("sinkhorn_backward(Tensor grad_plan, Tensor scores, Tensor u, Tensor v, float eps, str marginals) -> Tensor");
}

}  // namespace tokred
