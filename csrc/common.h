// Shared by the CPU and CUDA kernels: argument checks, dtype dispatch, the operators' options.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
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

// Sinkhorn marginals: (log mu, log nu, log scale); see tokred/reference/sinkhorn.py.
inline std::tuple<double, double, double> sinkhorn_log_marginals(int64_t k, int64_t n, std::string_view marginals) {
  TORCH_CHECK(marginals == "paper" || marginals == "balanced",
              "tokred: Sinkhorn marginals must be 'paper' or 'balanced', got '", marginals, "'");
  if (marginals == "paper") {
    const double total = std::log(static_cast<double>(k + n));
    return {-total, -total, total};
  }
  return {-std::log(static_cast<double>(k)), -std::log(static_cast<double>(n)), std::log(static_cast<double>(n))};
}

}  // namespace tokred
