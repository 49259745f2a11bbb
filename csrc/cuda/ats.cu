// ATS inverse-transform sampling on CUDA (reference: tokred/reference/ats.py, CPU twin: cpu/ats.cpp).
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common.h"
#include "cuda_utils.cuh"

namespace tokred::cuda {
namespace {

// First position p in [0, count) with cdf[p] >= q, count when none (cdf non-decreasing).
__device__ int first_at_least(const double* cdf, int count, double q) {
  int lo = 0, hi = count;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (cdf[mid] < q)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// The token picked for quantile q, from the CDF cdf[M] of the M > 0 valid tokens token[M]: what the CPU's
// sweep finds, by binary search. hi: the first valid token whose CDF reaches q; lo = hi - 1; the nearest rule
// takes the first token of lo's run of equal CDF values (argmin's first index) unless hi is strictly closer.
__device__ int pick(double q, const double* cdf, const int* token, int m, bool nearest) {
  const int hi = first_at_least(cdf, m, q);
  if (!nearest) return token[hi < m ? hi : m - 1];
  if (hi == 0) return token[0];
  const int lo = hi - 1;
  if (hi < m && !(q - cdf[lo] <= cdf[hi] - q)) return token[hi];
  return token[first_at_least(cdf, lo, cdf[lo])];
}

// Whether x's sign bit is set: such a score (-0 and -NaN too) has mass 0, as on the CPU.
__device__ __forceinline__ bool sign_bit(float x) { return copysignf(1.0f, x) < 0.0f; }
__device__ __forceinline__ bool sign_bit(double x) { return copysign(1.0, x) < 0.0; }

__device__ double quantile(int i, int k) { return (2.0 * i + 1.0) / (2.0 * (static_cast<double>(k) + 1.0)); }

// One block per image: scores[B, N], mask[B, N] -> ids[B, K], kept[B, K], counts[B].
// Scratch: cdf[N] (float64), token[N] (int).
template <typename scalar_t>
__global__ __launch_bounds__(kThreads) void ats_kernel(const scalar_t* __restrict__ scores,
                                                       const bool* __restrict__ mask, int n, int k, bool nearest,
                                                       ScratchRef scratch, int64_t* __restrict__ ids,
                                                       bool* __restrict__ kept, int64_t* __restrict__ counts) {
  __shared__ int valid_count;
  __shared__ int scan_shared[kWarps];
  const int64_t image = blockIdx.x;
  const scalar_t* s = scores + image * n;
  const bool* valid = mask + image * n;
  int64_t* out_ids = ids + image * k;
  ScratchCursor cursor(scratch.base());
  double* cdf = cursor.take<double>(n);
  int* token = cursor.take<int>(n);

  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const acc_t<scalar_t> score = static_cast<acc_t<scalar_t>>(s[j]);  // as the CPU tests it: float16 through float
    cdf[j] = valid[j] && !sign_bit(score) ? static_cast<double>(score) : 0.0;
    token[j] = valid[j];
  }
  __syncthreads();
  // The total and the CDF in the CPU kernel's order (the total lane_sum's, by a half-warp; the CDF in token order by
  // one thread), so the CDF (and the picks at exact ties) match it bit for bit. The valid tokens are compacted in
  // place: position m <= j is written after j is read.
  if (threadIdx.x < kWarpSize) {
    const double norm = half_warp_lane_sum<double>(n, [&](int j) { return cdf[j]; }) + 1e-6;
    if (threadIdx.x == 0) {
      double running = 0;
      int m = 0;
      for (int j = 0; j < n; ++j) {
        if (!token[j]) continue;
        running += cdf[j] / norm;
        cdf[m] = running;
        token[m++] = j;
      }
      valid_count = m;
    }
  }
  __syncthreads();
  const int m = valid_count;

  // Consecutive equal picks collapse: quantile i keeps its pick iff it differs from quantile i - 1's; a block
  // scan over chunks of kThreads quantiles gives the kept ones their slots.
  int used = 0;
  for (int base = 0; base < k; base += kThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    int token_id = -1;
    bool first = false;
    if (i < k && m > 0) {
      token_id = pick(quantile(i, k), cdf, token, m, nearest);
      first = i == 0 || token_id != pick(quantile(i - 1, k), cdf, token, m, nearest);
    }
    int chunk_total;
    const int slot = used + block_inclusive_scan(first, scan_shared, chunk_total) - 1;
    if (first) out_ids[slot] = token_id;
    used += chunk_total;
  }
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    kept[image * k + i] = i < used;
    if (i >= used) out_ids[i] = -1;
  }
  if (threadIdx.x == 0) counts[image] = used;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ats_sample_cuda(const at::Tensor& scores_in, const at::Tensor& mask_in,
                                                               int64_t num_samples, c10::string_view rule) {
  check_ats_args(scores_in, mask_in, num_samples);
  const bool nearest = ats_nearest(rule);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const auto scores = scores_in.contiguous();
  const auto mask = mask_in.contiguous();
  const int64_t b = scores.size(0), n = scores.size(1);
  check_int_range(n, "N");
  check_int_range(num_samples, "num_samples");
  auto ids = at::empty({b, num_samples}, scores.options().dtype(at::kLong));
  auto kept = at::empty({b, num_samples}, scores.options().dtype(at::kBool));
  auto counts = at::empty({b}, scores.options().dtype(at::kLong));
  if (b == 0) return {ids, kept, counts};
  const Scratch scratch(aligned_bytes<double>(n) + aligned_bytes<int>(n), b, scores);
  TOKRED_DISPATCH_FLOATING(scores.scalar_type(), "ats_sample_cuda", [&] {
    TOKRED_LAUNCH(static_cast<unsigned>(b), kThreads, scratch.shared_bytes(), ats_kernel<scalar_t>)(
        scores.const_data_ptr<scalar_t>(), mask.const_data_ptr<bool>(), static_cast<int>(n),
        static_cast<int>(num_samples), nearest, scratch.ref(), ids.mutable_data_ptr<int64_t>(),
        kept.mutable_data_ptr<bool>(), counts.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {ids, kept, counts};
}

}  // namespace

TOKRED_LIBRARY_IMPL(m) { m.impl("ats_sample", &ats_sample_cuda); }

}  // namespace tokred::cuda
