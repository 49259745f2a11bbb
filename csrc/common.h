// Shared by the CPU and CUDA kernels: argument checks, dtype dispatch, the operators' options.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <string_view>
#include <tuple>

namespace tokred {

// Floating inputs: float, double, half, bfloat16. Kernels accumulate in acc_t<scalar_t>.
#define TOKRED_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

template <typename T> struct Accumulate { using type = float; };
template <> struct Accumulate<double> { using type = double; };
template <typename T> using acc_t = typename Accumulate<T>::type;

inline at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_rank(const at::Tensor& t, int64_t rank, const char* name) {
  TORCH_CHECK(t.dim() == rank, "tokred: ", name, " must have ", rank, " dimensions, got shape ", t.sizes());
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "tokred: ", name, " must be floating point, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), "tokred: ", name_a, " is on ", a.device(), " but ", name_b, " is on ", b.device());
}

inline void check_clusters(int64_t k, int64_t n) {
  TORCH_CHECK(k >= 1 && k <= n, "tokred: the number of clusters must be in [1, ", n, "], got ", k);
}

// The argument checks of each operator, shared by its CPU and CUDA kernels.
inline void check_ats_args(const at::Tensor& scores, const at::Tensor& mask, int64_t num_samples) {
  check_rank(scores, 2, "scores");
  check_floating(scores, "scores");
  TORCH_CHECK(mask.sizes() == scores.sizes() && mask.scalar_type() == at::kBool,
              "tokred: mask must be a bool tensor shaped like scores ", scores.sizes());
  check_same_device(mask, scores, "mask", "scores");
  TORCH_CHECK(num_samples >= 1, "tokred: num_samples must be at least 1, got ", num_samples);
}

inline void check_per_token(const std::optional<at::Tensor>& t, const at::Tensor& x, const char* name) {
  if (!t) return;
  TORCH_CHECK(t->dim() == 2 && t->size(0) == x.size(0) && t->size(1) == x.size(1), "tokred: ", name,
              " must be a tensor of shape [B, N] = [", x.size(0), ", ", x.size(1), "], got ", t->sizes());
  check_same_device(*t, x, name, "x");
}

inline void check_dpc_knn_args(const at::Tensor& x, int64_t num_clusters, int64_t k_neighbors,
                               const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& noise) {
  check_rank(x, 3, "x");
  check_floating(x, "x");
  check_clusters(num_clusters, x.size(1));
  TORCH_CHECK(k_neighbors >= 1, "tokred: k_neighbors must be at least 1, got ", k_neighbors);
  check_per_token(mask, x, "mask");
  TORCH_CHECK(!mask || mask->scalar_type() == at::kBool, "tokred: mask must be a bool tensor");
  check_per_token(noise, x, "noise");
  if (noise) check_floating(*noise, "noise");
}

inline void check_kmedoids_args(const at::Tensor& x, const at::Tensor& weights, int64_t num_clusters, int64_t iters) {
  check_rank(x, 3, "x");
  check_floating(x, "x");
  check_per_token(weights, x, "weights");
  check_floating(weights, "weights");
  check_clusters(num_clusters, x.size(1));
  TORCH_CHECK(iters >= 0, "tokred: iters must be non-negative, got ", iters);
}

inline void check_sinkhorn_args(const at::Tensor& scores, double eps, int64_t iters) {
  check_rank(scores, 3, "scores");
  check_floating(scores, "scores");
  TORCH_CHECK(eps > 0, "tokred: eps must be positive, got ", eps);
  // T = 0 would run no column update, so the plan's columns would not sum to 1.
  TORCH_CHECK(iters >= 1, "tokred: Sinkhorn iters must be at least 1, got ", iters);
}

inline void check_sinkhorn_backward_args(const at::Tensor& grad_plan, const at::Tensor& scores, const at::Tensor& u,
                                         const at::Tensor& v, double eps) {
  check_rank(u, 3, "u");
  check_sinkhorn_args(scores, eps, u.size(1));
  const int64_t b = scores.size(0), k = scores.size(1), n = scores.size(2), iters = u.size(1);
  TORCH_CHECK(grad_plan.sizes() == scores.sizes(), "tokred: grad_plan must be shaped like scores");
  TORCH_CHECK(u.sizes() == at::IntArrayRef({b, iters, k}) && v.sizes() == at::IntArrayRef({b, iters, n}),
              "tokred: u and v must be Sinkhorn's histories [B, T, K] and [B, T, N], got ", u.sizes(), " and ",
              v.sizes());
  check_same_device(grad_plan, scores, "grad_plan", "scores");
  check_same_device(u, scores, "u", "scores");
  check_same_device(v, scores, "v", "scores");
  check_floating(grad_plan, "grad_plan");
  check_floating(u, "u");
  check_floating(v, "v");
}

// ATS: "nearest" (the study) or "inverse" (textbook inverse transform).
inline bool ats_nearest(std::string_view rule) {
  TORCH_CHECK(rule == "nearest" || rule == "inverse", "tokred: ATS rule must be 'nearest' or 'inverse', got '", rule, "'");
  return rule == "nearest";
}

// K-Medoids: "paper" (w_i * sum_j D_ij over all tokens) or "medoid" (sum of distances to own members).
inline bool kmedoids_paper(std::string_view rule) {
  TORCH_CHECK(rule == "paper" || rule == "medoid", "tokred: K-Medoids rule must be 'paper' or 'medoid', got '", rule, "'");
  return rule == "paper";
}

// Sinkhorn marginals: (log mu, log nu); the plan is exp(z + u + v) / nu. See tokred/reference/sinkhorn.py.
inline std::tuple<double, double> sinkhorn_log_marginals(int64_t k, int64_t n, std::string_view marginals) {
  TORCH_CHECK(marginals == "paper" || marginals == "balanced",
              "tokred: Sinkhorn marginals must be 'paper' or 'balanced', got '", marginals, "'");
  if (marginals == "paper") {
    const double total = std::log(static_cast<double>(k + n));
    return {-total, -total};
  }
  return {-std::log(static_cast<double>(k)), -std::log(static_cast<double>(n))};
}

}  // namespace tokred
