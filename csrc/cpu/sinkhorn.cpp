// Sinkhorn on the CPU, forward and backward (reference: tokred/reference/sinkhorn.py): the forward per image in the
// scaling domain (one exp per entry, then matrix-vector products) where the spread of its scores allows it, in the
// log domain otherwise; the backward in the log domain.
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <limits>
#include <numbers>
#include <type_traits>
#include <utility>
#include <vector>

#include "../common.h"
#include "cpu_math.h"

namespace tokred::cpu {
namespace {

// The largest spread D = max z - min z of an image's z = scores / eps for which its forward runs in the scaling
// domain (below). There E = exp(z - max z) >= exp(-D), b >= exp(-D) / 2 and a <= 2 mu exp(D), so every term the
// iterations sum, E_kj b_j >= exp(-2D) / 2 and E_kj a_k >= exp(-D) mu / N, is a normal number of A and every sum is
// far from overflow: the accumulation is as exact as in the log domain.
template <typename A>
constexpr A kScalingSpread = std::is_same_v<A, float> ? A(40) : A(300);

// The smallest and largest of p[0, n), NaN skipped.
template <typename A>
std::pair<A, A> min_max(const A* __restrict p, int64_t n) {
  constexpr int64_t lanes = kLanes<A>;  // GCC does not vectorise scalar min and max reductions by itself
  Lanes<A> lo, hi;
  for (int64_t l = 0; l < lanes; ++l) {
    lo[l] = std::numeric_limits<A>::infinity();
    hi[l] = -std::numeric_limits<A>::infinity();
  }
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) {
    const Lanes<A> x = load_lanes(p + j);
    lo = x < lo ? x : lo;
    hi = x > hi ? x : hi;
  }
  A smallest = lo[0], largest = hi[0];
  for (int64_t l = 1; l < lanes; ++l) {
    smallest = std::min(smallest, lo[l]);
    largest = std::max(largest, hi[l]);
  }
  for (; j < n; ++j) {
    smallest = std::min(smallest, p[j]);
    largest = std::max(largest, p[j]);
  }
  return {smallest, largest};
}

// One image forward in the scaling domain (max z - min z <= kScalingSpread) from its scores s[K, N], z = s / eps and
// s_max the largest score; E[K, N] and work[K + 2N] are scratch; writes u_hist[T, K], v_hist[T, N] and plan[K, N]
// (T >= 1).
//
// One exp per entry, E = exp(z - max z). With a_k = exp(u_k + max z + beta) and b_j = exp(v_j - beta), the log-domain
// updates are matrix-vector products: u_k = log mu - LSE_j(z_kj + v_j) gives a_k = mu / (E b)_k, and
// v_j = log nu - LSE_k(z_kj + u_k) gives b_j = nu / (E^T a)_j; u and v are the logs. beta, a multiple of log 2, keeps
// max b in [1/2, 1) (b is rescaled by powers of 2, exactly), so neither a nor b drifts however many iterations run
// (with the study's marginals sum mu != sum nu: u drifts by log(K / N) per iteration, v by log(N / K)). The plan
// exp(z + u + v) / nu = E_kj a_k / (E^T a)_j is the last column normalisation itself: its columns sum to 1 to rounding.
template <typename A>
void scaling_forward(const A* __restrict s, int64_t k, int64_t n, int64_t iters, A eps, A s_max, A log_mu, A log_nu,
                     A* __restrict E, A* __restrict work, A* __restrict u_hist, A* __restrict v_hist,
                     A* __restrict plan) {
  A* a = work;
  A* b = a + k;
  A* c = b + n;
  const A inv_eps = A(1) / eps, shift = s_max / eps;
  for (int64_t i = 0; i < k * n; ++i) E[i] = exp_approx(s[i] * inv_eps - shift);
  const A mu = std::exp(log_mu), nu = std::exp(log_nu);
  std::fill(b, b + n, A(1));
  A beta = 0;
  for (int64_t t = 0; t < iters; ++t) {
    for (int64_t r = 0; r < k; ++r) a[r] = lane_dot(E + r * n, b, n);
    A* u = u_hist + t * k;
    for (int64_t r = 0; r < k; ++r) {
      u[r] = log_mu - shift - beta - log_approx(a[r]);
      a[r] = mu / a[r];
    }
    std::fill(c, c + n, A(0));
    for (int64_t r = 0; r < k; ++r)
      for (int64_t j = 0; j < n; ++j) c[j] += E[r * n + j] * a[r];
    A* v = v_hist + t * n;
    for (int64_t j = 0; j < n; ++j) {
      v[j] = log_nu + beta - log_approx(c[j]);
      b[j] = nu / c[j];
    }
    int exponent;
    std::frexp(lane_max(b, n), &exponent);
    const A scale = std::ldexp(A(1), -exponent);
    for (int64_t j = 0; j < n; ++j) b[j] *= scale;
    beta += static_cast<A>(exponent) * std::numbers::ln2_v<A>;
  }
  // a and c still hold the last iteration's values
  for (int64_t j = 0; j < n; ++j) c[j] = A(1) / c[j];
  for (int64_t r = 0; r < k; ++r)
    for (int64_t j = 0; j < n; ++j) plan[r * n + j] = E[r * n + j] * a[r] * c[j];
}

// One image forward in the log domain: z[K, N] = scores / eps; work[K*N + K + N] is scratch; writes u_hist[T, K],
// v_hist[T, N] and plan[K, N] (T >= 1).
//
// Each iteration takes one exp per entry. The row update computes e_kj = exp(z_kj + v_j - m_k) with
// m_k the row's exact maximum (so e <= 1 and its row sum s_k is in [1, N]) and u_k = log mu - m_k - log s_k.
// Then exp(z_kj + u_k) = e_kj exp(-v_j) w_k with w_k = exp(u_k + m_k) = mu / s_k, so the column update
// v'_j = log nu - LSE_k(z_kj + u_k) = log nu + v_j - log c_j with c_j = sum_k e_kj w_k needs no exp.
// The plan exp(z + u + v') / nu = e_kj w_k / c_j is that column normalisation itself, so its columns sum to 1
// to rounding even where z is huge (eps -> 0): there v', of magnitude ~|z|, carries its O(1) part too coarsely
// for exp(z + u + v') to be normalised.
// A column whose c_j underflows (its largest entry is ~1e-30 of its row's maximum) is redone in the
// log domain, its plan the softmax over k of z_kj + u_k.
template <typename A>
void log_forward(const A* __restrict z, int64_t k, int64_t n, int64_t iters, A log_mu, A log_nu,
                 A* __restrict work, A* __restrict u_hist, A* __restrict v_hist, A* __restrict plan) {
  A* e = work;
  A* w = e + k * n;
  A* c = w + k;
  const A tiny = std::numeric_limits<A>::min() * A(1e8) * std::exp(log_mu);
  // Column j's log-sum-exp over k of z_kj + u_k in two parts: the maximum m and the sum of exp(z_kj + u_k - m).
  const auto column_lse = [&](const A* u, int64_t j) {
    A m = -std::numeric_limits<A>::infinity();
    for (int64_t r = 0; r < k; ++r) m = std::max(m, z[r * n + j] + u[r]);
    A s = 0;
    for (int64_t r = 0; r < k; ++r) s += exp_approx(z[r * n + j] + u[r] - m);
    return std::pair{m, s};
  };
  std::vector<A> zeros(n, A(0));
  const A* v = zeros.data();
  for (int64_t t = 0; t < iters; ++t) {
    A* u = u_hist + t * k;
    for (int64_t r = 0; r < k; ++r) {
      A* er = e + r * n;
      for (int64_t j = 0; j < n; ++j) er[j] = z[r * n + j] + v[j];
      const A m = lane_max(er, n);
      for (int64_t j = 0; j < n; ++j) er[j] = exp_approx(er[j] - m);
      const A s = lane_sum(er, n);
      u[r] = log_mu - (m + std::log(s));
      w[r] = std::exp(log_mu) / s;
    }
    std::fill(c, c + n, A(0));
    for (int64_t r = 0; r < k; ++r)
      for (int64_t j = 0; j < n; ++j) c[j] += e[r * n + j] * w[r];
    A* v_next = v_hist + t * n;
    for (int64_t j = 0; j < n; ++j) {
      if (c[j] > tiny) {
        v_next[j] = log_nu + v[j] - std::log(c[j]);
        c[j] = A(1) / c[j];
      } else {
        const auto [m, s] = column_lse(u, j);
        v_next[j] = log_nu - (m + std::log(s));
        c[j] = 0;  // marks the column for the plan's log-domain path
      }
    }
    v = v_next;
  }
  // e, w and c still hold the last iteration's values
  for (int64_t r = 0; r < k; ++r)
    for (int64_t j = 0; j < n; ++j) plan[r * n + j] = e[r * n + j] * w[r] * c[j];
  const A* u = u_hist + (iters - 1) * k;
  for (int64_t j = 0; j < n; ++j) {
    if (c[j] != 0) continue;
    const auto [m, s] = column_lse(u, j);
    for (int64_t r = 0; r < k; ++r) plan[r * n + j] = exp_approx(z[r * n + j] + u[r] - m) / s;
  }
}

// One image backward through the unrolled iterations (T >= 1); g[K, N] holds dL/dplan on entry and dL/dz on exit.
template <typename A>
void sinkhorn_backward_image(const A* z, int64_t k, int64_t n, int64_t iters, A log_mu, A log_nu, const A* u_hist,
                             const A* v_hist, A* g, A* gu, A* gv) {
  std::vector<A> zeros_n(n, A(0));
  const A* u_last = u_hist + (iters - 1) * k;
  const A* v_last = v_hist + (iters - 1) * n;
  std::fill(gu, gu + k, A(0));
  std::fill(gv, gv + n, A(0));
  for (int64_t r = 0; r < k; ++r)  // d/dlog(plan) = g * plan, which feeds z, u_T and v_T
    for (int64_t j = 0; j < n; ++j) {
      const A gl = g[r * n + j] * exp_approx(z[r * n + j] + u_last[r] + v_last[j] - log_nu);
      g[r * n + j] = gl;
      gu[r] += gl;
      gv[j] += gl;
    }
  for (int64_t t = iters - 1; t >= 0; --t) {
    const A* u = u_hist + t * k;
    const A* v = v_hist + t * n;
    const A* v_prev = t ? v_hist + (t - 1) * n : zeros_n.data();
    // v_t = log_nu - LSE_k(z + u_t): its softmax over k is exp(z + u_t + v_t - log_nu).
    for (int64_t r = 0; r < k; ++r) {
      A acc = 0;
      for (int64_t j = 0; j < n; ++j) {
        const A contrib = gv[j] * exp_approx(z[r * n + j] + u[r] + v[j] - log_nu);
        g[r * n + j] -= contrib;
        acc += contrib;
      }
      gu[r] -= acc;
    }
    // u_t = log_mu - LSE_j(z + v_{t-1}): its softmax over j is exp(z + v_{t-1} + u_t - log_mu).
    std::fill(gv, gv + n, A(0));
    for (int64_t r = 0; r < k; ++r)
      for (int64_t j = 0; j < n; ++j) {
        const A contrib = gu[r] * exp_approx(z[r * n + j] + v_prev[j] + u[r] - log_mu);
        g[r * n + j] -= contrib;
        gv[j] -= contrib;
      }
    std::fill(gu, gu + k, A(0));
  }
}

// One image forward from its scores s[K, N]: in the scaling domain where the spread of z = s / eps allows it, in the
// log domain otherwise. z[K, N] and work[K*N + K + N] are scratch.
template <typename A>
void sinkhorn_forward_image(const A* __restrict s, int64_t k, int64_t n, int64_t iters, A eps, A log_mu, A log_nu,
                            A* __restrict z, A* __restrict work, A* __restrict u_hist, A* __restrict v_hist,
                            A* __restrict plan) {
  const auto [s_min, s_max] = min_max(s, k * n);
  if ((s_max - s_min) / eps <= kScalingSpread<A>) {  // false for infinite scores (NaN ones give NaN either way)
    scaling_forward(s, k, n, iters, eps, s_max, log_mu, log_nu, z, work, u_hist, v_hist, plan);
    return;
  }
  for (int64_t e = 0; e < k * n; ++e) z[e] = s[e] / eps;
  log_forward(z, k, n, iters, log_mu, log_nu, work, u_hist, v_hist, plan);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_cpu(const at::Tensor& scores_in, double eps, int64_t iters,
                                                            c10::string_view marginals) {
  check_sinkhorn_args(scores_in, eps, iters);
  const int64_t b = scores_in.size(0), k = scores_in.size(1), n = scores_in.size(2);
  const auto [log_mu, log_nu] = sinkhorn_log_marginals(k, n, marginals);
  const auto acc = accumulation_type(scores_in.scalar_type());
  const auto scores = scores_in.to(acc).contiguous();  // float16 and bfloat16 scores are exact in float
  auto plan = at::empty({b, k, n}, scores.options());
  auto u = at::empty({b, iters, k}, scores.options());
  auto v = at::empty({b, iters, n}, scores.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "sinkhorn_cpu", [&] {
    const auto* ss = scores.const_data_ptr<scalar_t>();
    auto* us = u.mutable_data_ptr<scalar_t>();
    auto* vs = v.mutable_data_ptr<scalar_t>();
    auto* ps = plan.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, b, 4, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> z(k * n), work(k * n + k + n);
      for (int64_t i = begin; i < end; ++i)
        sinkhorn_forward_image<scalar_t>(ss + i * k * n, k, n, iters, static_cast<scalar_t>(eps), log_mu, log_nu, z.data(), work.data(),
                      us + i * iters * k, vs + i * iters * n, ps + i * k * n);
    });
  });
  return {plan.to(scores_in.scalar_type()), u, v};
}

at::Tensor sinkhorn_backward_cpu(const at::Tensor& grad_plan, const at::Tensor& scores, const at::Tensor& u,
                                 const at::Tensor& v, double eps, c10::string_view marginals) {
  check_sinkhorn_backward_args(grad_plan, scores, u, v, eps);
  const int64_t b = scores.size(0), k = scores.size(1), n = scores.size(2), iters = u.size(1);
  const auto [log_mu, log_nu] = sinkhorn_log_marginals(k, n, marginals);
  const auto acc = accumulation_type(scores.scalar_type());
  const auto z = (scores.to(acc) / eps).contiguous();
  auto grad = grad_plan.to(acc).contiguous().clone();
  const auto uc = u.to(acc).contiguous();
  const auto vc = v.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "sinkhorn_backward_cpu", [&] {
    const auto* zs = z.const_data_ptr<scalar_t>();
    const auto* us = uc.const_data_ptr<scalar_t>();
    const auto* vs = vc.const_data_ptr<scalar_t>();
    auto* gs = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, b, 4, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> gu(k), gv(n);
      for (int64_t i = begin; i < end; ++i)
        sinkhorn_backward_image<scalar_t>(zs + i * k * n, k, n, iters, log_mu, log_nu, us + i * iters * k, vs + i * iters * n,
                       gs + i * k * n, gu.data(), gv.data());
    });
  });
  return (grad / eps).to(scores.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(tokred, CPU, m) {
  m.impl("sinkhorn", &sinkhorn_cpu);
  m.impl("sinkhorn_backward", &sinkhorn_backward_cpu);
}

}  // namespace tokred::cpu
