// Sinkhorn on CUDA, forward and backward (reference: tokred/reference/sinkhorn.py, CPU twin: cpu/sinkhorn.cpp): the
// forward per image in the scaling domain where the spread of its scores allows it, in the log domain otherwise; the
// backward in the log domain.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <numbers>

#include "../common.h"
#include "cuda_utils.cuh"

namespace tokred::cuda {
namespace {

// z = scores / eps for one image's scores[K, N], as the CPU computes it.
template <typename scalar_t, typename A>
struct Logits {
  const scalar_t* scores;
  int n;
  A eps;
  __device__ A operator()(int r, int j) const { return static_cast<A>(scores[r * n + j]) / eps; }
};

// log_target - LSE_j(z_rj + shift_j) of row r, one warp: the max-shift pass, then the sum of exp.
template <typename scalar_t, typename A>
__device__ A row_update(const Logits<scalar_t, A>& z, int r, const A* shift, A log_target) {
  const int lane = threadIdx.x % kWarpSize;
  A m = -infinity<A>();
  for (int j = lane; j < z.n; j += kWarpSize) {
    const A x = z(r, j) + shift[j];
    m = x > m ? x : m;
  }
  m = warp_max(m);
  A s = 0;
  for (int j = lane; j < z.n; j += kWarpSize) s += exp_acc(z(r, j) + shift[j] - m);
  s = warp_sum(s);
  return log_target - (m + log_acc(s));
}

// LSE_r(z_rj + shift_r) of column j in two parts, one thread: the maximum m and the sum s of exp(z_rj + shift_r - m).
template <typename scalar_t, typename A>
__device__ void column_lse(const Logits<scalar_t, A>& z, int k, int j, const A* shift, A& m, A& s) {
  m = -infinity<A>();
  for (int r = 0; r < k; ++r) {
    const A x = z(r, j) + shift[r];
    m = x > m ? x : m;
  }
  s = 0;
  for (int r = 0; r < k; ++r) s += exp_acc(z(r, j) + shift[r] - m);
}

// The largest spread D = max z - min z of an image's z = scores / eps for which its forward runs in the scaling domain:
// the CPU's kScalingSpread (cpu/sinkhorn.cpp, which says why), so that every image takes the CPU's path.
template <typename A>
constexpr A kScalingSpread = sizeof(A) == sizeof(float) ? A(40) : A(300);

// One image in the scaling domain, the CPU's scaling_forward, from its scores s[K, N] and its largest score s_max:
// E = exp(z - max z) once, b = 1, beta = 0; per iteration a_k = mu / (E b)_k (two rows per warp, each summed by a
// half-warp in the CPU's lane order), u_k = log mu - max z - beta - log (E b)_k, then c_j = (E^T a)_j (one thread
// per column, summed over the rows in order), v_j = log nu + beta - log c_j, b_j = nu / c_j, and b rescaled by the
// power of 2 that brings its maximum into [1/2, 1), beta += that exponent times log 2. The plan is E_kj a_k / c_j
// with the last iteration's a and c. E[K, N], a[K], b[N] are scratch; `reduce` holds kWarps values.
template <typename scalar_t, typename A>
__device__ void scaling_forward(const scalar_t* s, int k, int n, int iters, A eps, A s_max, A log_mu, A log_nu, A* E,
                                A* a, A* b, A* reduce, A* us, A* vs, scalar_t* p) {
  const A inv_eps = A(1) / eps, shift = s_max / eps;
  for (int e = threadIdx.x; e < k * n; e += blockDim.x) E[e] = exp_acc(static_cast<A>(s[e]) * inv_eps - shift);
  for (int j = threadIdx.x; j < n; j += blockDim.x) b[j] = 1;
  const A mu = exp_acc(log_mu), nu = exp_acc(log_nu);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  A beta = 0;
  __syncthreads();
  for (int t = 0; t < iters; ++t) {
    for (int first = 2 * warp; first < k; first += 2 * kWarps) {
      const int r = first + lane / kLaneSumWidth;
      const A* row = E + (r < k ? r : first) * n;  // a half-warp past the last row sums one again, unused
      const A sum = half_warp_lane_sum<A>(n, [&](int j) { return row[j] * b[j]; });
      if (lane % kLaneSumWidth == 0 && r < k) {
        us[t * k + r] = log_mu - shift - beta - log_acc(sum);
        a[r] = mu / sum;
      }
    }
    __syncthreads();
    const bool last = t + 1 == iters;
    A b_max = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      A c = 0;
      for (int r = 0; r < k; ++r) c += E[r * n + j] * a[r];
      vs[t * n + j] = log_nu + beta - log_acc(c);
      b[j] = nu / c;
      b_max = b[j] > b_max ? b[j] : b_max;
      if (last) {
        const A inv_c = A(1) / c;
        for (int r = 0; r < k; ++r) p[r * n + j] = static_cast<scalar_t>(E[r * n + j] * a[r] * inv_c);
      }
    }
    if (last) break;
    int exponent;
    frexp_acc(block_max(b_max, reduce), &exponent);
    const A scale = ldexp_acc(A(1), -exponent);
    for (int j = threadIdx.x; j < n; j += blockDim.x) b[j] *= scale;
    beta += static_cast<A>(exponent) * std::numbers::ln2_v<A>;
    __syncthreads();
  }
}

// One image in the log domain: per iteration u_r = log mu - LSE_j(z_rj + v_j) with one warp per row, then
// v_j = log nu - LSE_r(z_rj + u_r) with one thread per column. The plan exp(z + u + v) / nu is the last column
// update's softmax over r of z_rj + u_r, written as such so that its columns sum to 1 to rounding even where z is
// huge (eps -> 0). u[K], v[N] are scratch.
template <typename scalar_t, typename A>
__device__ void log_forward(const Logits<scalar_t, A>& z, int k, int iters, A log_mu, A log_nu, A* u, A* v, A* us,
                            A* vs, scalar_t* p) {
  const int n = z.n, warp = threadIdx.x / kWarpSize;
  for (int r = threadIdx.x; r < k; r += blockDim.x) u[r] = 0;
  for (int j = threadIdx.x; j < n; j += blockDim.x) v[j] = 0;
  __syncthreads();
  for (int t = 0; t < iters; ++t) {
    for (int r = warp; r < k; r += kWarps) {
      const A value = row_update(z, r, v, log_mu);
      if (threadIdx.x % kWarpSize == 0) u[r] = us[t * k + r] = value;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      A m, s;
      column_lse(z, k, j, u, m, s);
      v[j] = vs[t * n + j] = log_nu - (m + log_acc(s));
      if (t + 1 == iters)
        for (int r = 0; r < k; ++r) p[r * n + j] = static_cast<scalar_t>(exp_acc(z(r, j) + u[r] - m) / s);
    }
    __syncthreads();
  }
}

// One block per image: scores[B, K, N] -> plan[B, K, N], u_hist[B, T, K], v_hist[B, T, N] (T >= 1), each image in
// the scaling domain where its spread (max s - min s) / eps is at most kScalingSpread, else (also for an infinite
// spread) in the log domain: the CPU's decision, from the same minimum and maximum (NaN scores skipped, as there).
// Scratch: vectors a[K], b[N] (the log domain's u, v) and matrix E[K, N] (A), each in shared memory where it fits.
// O(T K N).
template <typename scalar_t, typename A>
__global__ __launch_bounds__(kThreads) void sinkhorn_kernel(const scalar_t* __restrict__ scores, int k, int n,
                                                            int iters, A eps, A log_mu, A log_nu, ScratchRef vectors,
                                                            ScratchRef matrix, scalar_t* __restrict__ plan,
                                                            A* __restrict__ u_hist, A* __restrict__ v_hist) {
  __shared__ A reduce[kWarps];
  const int64_t image = blockIdx.x;
  const int64_t kn = static_cast<int64_t>(k) * n;
  const scalar_t* s = scores + image * kn;
  ScratchCursor cursor(vectors.base());
  A* a = cursor.take<A>(k);
  A* b = cursor.take<A>(n);
  A* us = u_hist + image * iters * k;
  A* vs = v_hist + image * iters * n;
  scalar_t* p = plan + image * kn;

  A lo = infinity<A>(), hi = -infinity<A>();
  for (int e = threadIdx.x; e < k * n; e += blockDim.x) {
    const A x = static_cast<A>(s[e]);
    lo = x < lo ? x : lo;
    hi = x > hi ? x : hi;
  }
  const A s_max = block_max(hi, reduce), s_min = -block_max(-lo, reduce);
  if ((s_max - s_min) / eps <= kScalingSpread<A>)
    scaling_forward(s, k, n, iters, eps, s_max, log_mu, log_nu, ScratchCursor(matrix.base()).take<A>(kn), a, b, reduce,
                    us, vs, p);
  else
    log_forward(Logits<scalar_t, A>{s, n, eps}, k, iters, log_mu, log_nu, a, b, us, vs, p);
}

// One block per image, the CPU's sinkhorn_backward_image (T >= 1): grad[B, K, N] (dL/dplan, in A) -> out[B, K, N] =
// dL/dscores.
// The vector recursion runs first; every entry of dL/dz is then g * plan minus the T pairs of contributions of the
// unrolled iterations, subtracted in the CPU's order (u_t, v_t: the histories, u_{-1} = v_{-1} = 0):
//   gl = g * exp(z + u_{T-1} + v_{T-1} - log nu),  gu_in = sum_j gl,  gv_{T-1} = sum_k gl;
//   for t = T-1 .. 0:  a = gv_t(j) exp(z + u_t + v_t - log nu),  gu_t = [t = T-1] gu_in - sum_j a;
//                      b = gu_t(r) exp(z + v_{t-1} + u_t - log mu),  gv_{t-1} = -sum_k b;
//   dL/dz = gl - a_{T-1} - b_{T-1} - ... - a_0 - b_0.
// Scratch: gu_in[K], gv[T, N], gu[T, K] (A). O(T K N).
template <typename scalar_t, typename A>
__global__ __launch_bounds__(kThreads) void sinkhorn_backward_kernel(
    const A* __restrict__ grad, const scalar_t* __restrict__ scores, const A* __restrict__ u_hist,
    const A* __restrict__ v_hist, int k, int n, int iters, A eps, A log_mu, A log_nu, ScratchRef scratch,
    scalar_t* __restrict__ out) {
  const int64_t image = blockIdx.x;
  const int64_t kn = static_cast<int64_t>(k) * n;
  const Logits<scalar_t, A> z{scores + image * kn, n, eps};
  const A* g = grad + image * kn;
  const A* us = u_hist + image * iters * k;
  const A* vs = v_hist + image * iters * n;
  ScratchCursor cursor(scratch.base());
  A* gu_in = cursor.take<A>(k);
  A* gv = cursor.take<A>(static_cast<int64_t>(iters) * n);
  A* gu = cursor.take<A>(static_cast<int64_t>(iters) * k);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const A* u_last = us + (iters - 1) * k;
  const A* v_last = vs + (iters - 1) * n;
  const auto grad_log_plan = [&](int r, int j) {  // g * plan = dL/dlog(plan), which feeds z, u_{T-1} and v_{T-1}
    return g[r * n + j] * exp_acc(z(r, j) + u_last[r] + v_last[j] - log_nu);
  };

  for (int r = warp; r < k; r += kWarps) {
    A s = 0;
    for (int j = lane; j < n; j += kWarpSize) s += grad_log_plan(r, j);
    s = warp_sum(s);
    if (lane == 0) gu_in[r] = s;
  }
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    A s = 0;
    for (int r = 0; r < k; ++r) s += grad_log_plan(r, j);
    gv[(iters - 1) * n + j] = s;
  }
  __syncthreads();
  for (int t = iters - 1; t >= 0; --t) {
    const A* u = us + t * k;
    const A* v = vs + t * n;
    const A* gv_t = gv + t * n;
    // v_t = log nu - LSE_k(z + u_t): its softmax over k is exp(z + u_t + v_t - log nu).
    for (int r = warp; r < k; r += kWarps) {
      A s = 0;
      for (int j = lane; j < n; j += kWarpSize) s += gv_t[j] * exp_acc(z(r, j) + u[r] + v[j] - log_nu);
      s = warp_sum(s);
      if (lane == 0) gu[t * k + r] = (t == iters - 1 ? gu_in[r] : A(0)) - s;
    }
    __syncthreads();
    if (t == 0) break;  // dL/dv_{-1} is not needed: v_{-1} = 0 is a constant
    // u_t = log mu - LSE_j(z + v_{t-1}): its softmax over j is exp(z + v_{t-1} + u_t - log mu).
    const A* v_prev = vs + (t - 1) * n;
    const A* gu_t = gu + t * k;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      A s = 0;
      for (int r = 0; r < k; ++r) s += gu_t[r] * exp_acc(z(r, j) + v_prev[j] + u[r] - log_mu);
      gv[(t - 1) * n + j] = -s;
    }
    __syncthreads();
  }

  scalar_t* o = out + image * kn;
  for (int e = threadIdx.x; e < k * n; e += blockDim.x) {
    const int r = e / n, j = e % n;
    const A zz = z(r, j);
    A value = grad_log_plan(r, j);
    for (int t = iters - 1; t >= 0; --t) {
      const A ur = us[t * k + r];
      value -= gv[t * n + j] * exp_acc(zz + ur + vs[t * n + j] - log_nu);
      value -= gu[t * k + r] * exp_acc(zz + (t > 0 ? vs[(t - 1) * n + j] : A(0)) + ur - log_mu);
    }
    o[e] = static_cast<scalar_t>(value / eps);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_cuda(const at::Tensor& scores_in, double eps, int64_t iters,
                                                             c10::string_view marginals) {
  check_sinkhorn_args(scores_in, eps, iters);
  const int64_t b = scores_in.size(0), k = scores_in.size(1), n = scores_in.size(2);
  const auto [log_mu, log_nu] = sinkhorn_log_marginals(k, n, marginals);
  check_int_range(k * n, "K * N");
  check_int_range(iters, "iters");
  check_int_range(iters * (k + n), "T * (K + N)");
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const auto scores = scores_in.contiguous();
  const auto acc = scores.options().dtype(accumulation_type(scores.scalar_type()));
  auto plan = at::empty({b, k, n}, scores.options());
  auto u = at::empty({b, iters, k}, acc);
  auto v = at::empty({b, iters, n}, acc);
  if (b == 0) return {plan, u, v};
  TOKRED_DISPATCH_FLOATING(scores.scalar_type(), "sinkhorn_cuda", [&] {
    using A = acc_t<scalar_t>;
    const Scratch vectors(aligned_bytes<A>(k) + aligned_bytes<A>(n), b, scores);
    const Scratch matrix(aligned_bytes<A>(k * n), b, scores, vectors.shared_bytes());
    TOKRED_LAUNCH(static_cast<unsigned>(b), kThreads, vectors.shared_bytes() + matrix.shared_bytes(),
                  sinkhorn_kernel<scalar_t, A>)(
        scores.const_data_ptr<scalar_t>(), static_cast<int>(k), static_cast<int>(n), static_cast<int>(iters),
        static_cast<A>(eps), static_cast<A>(log_mu), static_cast<A>(log_nu), vectors.ref(), matrix.ref(),
        plan.mutable_data_ptr<scalar_t>(), u.mutable_data_ptr<A>(), v.mutable_data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {plan, u, v};
}

at::Tensor sinkhorn_backward_cuda(const at::Tensor& grad_plan, const at::Tensor& scores_in, const at::Tensor& u_in,
                                  const at::Tensor& v_in, double eps, c10::string_view marginals) {
  check_sinkhorn_backward_args(grad_plan, scores_in, u_in, v_in, eps);
  const int64_t b = scores_in.size(0), k = scores_in.size(1), n = scores_in.size(2), iters = u_in.size(1);
  const auto [log_mu, log_nu] = sinkhorn_log_marginals(k, n, marginals);
  check_int_range(k * n, "K * N");
  check_int_range(iters, "iters");
  check_int_range(iters * (k + n), "T * (K + N)");
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const auto acc = accumulation_type(scores_in.scalar_type());
  const auto scores = scores_in.contiguous();
  const auto grad = grad_plan.to(acc).contiguous();
  const auto u = u_in.to(acc).contiguous();
  const auto v = v_in.to(acc).contiguous();
  auto out = at::empty({b, k, n}, scores.options());
  if (b == 0) return out;
  TOKRED_DISPATCH_FLOATING(scores.scalar_type(), "sinkhorn_backward_cuda", [&] {
    using A = acc_t<scalar_t>;
    const Scratch scratch(aligned_bytes<A>(k) + aligned_bytes<A>(iters * n) + aligned_bytes<A>(iters * k), b, scores);
    TOKRED_LAUNCH(static_cast<unsigned>(b), kThreads, scratch.shared_bytes(), sinkhorn_backward_kernel<scalar_t, A>)(
        grad.const_data_ptr<A>(), scores.const_data_ptr<scalar_t>(), u.const_data_ptr<A>(), v.const_data_ptr<A>(),
        static_cast<int>(k), static_cast<int>(n), static_cast<int>(iters), static_cast<A>(eps),
        static_cast<A>(log_mu), static_cast<A>(log_nu), scratch.ref(), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TOKRED_LIBRARY_IMPL(m) {
  m.impl("sinkhorn", &sinkhorn_cuda);
  m.impl("sinkhorn_backward", &sinkhorn_backward_cuda);
}

}  // namespace tokred::cuda
