// K-Medoids clustering on CUDA (reference: tokred/reference/kmedoids.py, CPU twin: cpu/kmedoids.cpp).
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common.h"
#include "cuda_utils.cuh"

namespace tokred::cuda {
namespace {

// cluster[i] = the nearest medoid of token i (lowest k on ties), for all N tokens of the image. O(K N).
template <typename A>
__device__ void assign_nearest(const A* d, int n, const int* medoid, int k, int* cluster) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    int best = 0;
    A best_dist = d[medoid[0] * n + i];  // D symmetric: column i, coalesced over i
    for (int q = 1; q < k; ++q) {
      const A dq = d[medoid[q] * n + i];
      if (dq < best_dist) {
        best = q;
        best_dist = dq;
      }
    }
    cluster[i] = best;
  }
}

// One block per image, after the distances dist[B, N, N] (exactly symmetric); weights[B, N] in A.
// Scratch: cost[N] (A), cluster[N] and medoid[K] (int).
template <typename A>
__global__ __launch_bounds__(kThreads) void kmedoids_kernel(const A* __restrict__ dist, const A* __restrict__ weights,
                                                            int n, int k, int iters, bool paper, ScratchRef scratch,
                                                            int64_t* __restrict__ medoids,
                                                            int64_t* __restrict__ assignment) {
  const int64_t image = blockIdx.x;
  const A* d = dist + image * n * n;
  const A* w = weights + image * n;
  ScratchCursor cursor(scratch.base());
  A* cost = cursor.take<A>(n);
  int* cluster = cursor.take<int>(n);
  int* medoid = cursor.take<int>(k);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;

  top_k_by_rank(w, n, k, medoid);  // the K heaviest tokens, lower index first on ties
  if (paper)  // w_i * sum_j D_ij never changes: computed once, summed in the CPU's order
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      A sum = 0;
      for (int j = 0; j < n; ++j) sum += d[j * n + i];
      cost[i] = w[i] * sum;
    }
  __syncthreads();

  for (int t = 0; t < iters; ++t) {
    assign_nearest(d, n, medoid, k, cluster);
    __syncthreads();
    if (!paper) {  // sum of distances to the members of the own cluster, O(N^2)
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int own = cluster[i];
        A sum = 0;
        for (int j = 0; j < n; ++j)
          if (cluster[j] == own) sum += d[j * n + i];
        cost[i] = sum;
      }
      __syncthreads();
    }
    // One warp per cluster: the member with the lowest cost, lowest index on ties; an empty cluster keeps its
    // medoid. O(K N / 32) per warp.
    for (int q = warp; q < k; q += kWarps) {
      A best = infinity<A>();
      int best_index = INT_MAX;
      for (int i = lane; i < n; i += kWarpSize) {
        const A c = cost[i];
        if (cluster[i] == q && (c < best || (c == best && i < best_index))) {
          best = c;
          best_index = i;
        }
      }
      warp_argmin(best, best_index);
      if (lane == 0 && best_index != INT_MAX) medoid[q] = best_index;
    }
    __syncthreads();
  }

  assign_nearest(d, n, medoid, k, cluster);
  for (int i = threadIdx.x; i < n; i += blockDim.x) assignment[image * n + i] = cluster[i];
  for (int q = threadIdx.x; q < k; q += blockDim.x) medoids[image * k + q] = medoid[q];
}

std::tuple<at::Tensor, at::Tensor> kmedoids_cuda(const at::Tensor& x_in, const at::Tensor& weights_in,
                                                 int64_t num_clusters, int64_t iters, c10::string_view rule) {
  check_kmedoids_args(x_in, weights_in, num_clusters, iters);
  const int64_t b = x_in.size(0), n = x_in.size(1);
  check_int_range(iters, "iters");
  const bool paper = kmedoids_paper(rule);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto acc = accumulation_type(x_in.scalar_type());
  const auto x = x_in.contiguous();
  const auto weights = weights_in.to(acc).contiguous();
  auto medoids = at::empty({b, num_clusters}, x.options().dtype(at::kLong));
  auto assignment = at::empty({b, n}, x.options().dtype(at::kLong));
  if (b == 0) return {medoids, assignment};
  const auto dist = pairwise_distances(x, /*over_sqrt_c=*/false);
  AT_DISPATCH_FLOATING_TYPES(acc, "kmedoids_cuda", [&] {
    const Scratch scratch(aligned_bytes<scalar_t>(n) + aligned_bytes<int>(n) + aligned_bytes<int>(num_clusters), b, x);
    TOKRED_LAUNCH(static_cast<unsigned>(b), kThreads, scratch.shared_bytes(), kmedoids_kernel<scalar_t>)(
        dist.const_data_ptr<scalar_t>(), weights.const_data_ptr<scalar_t>(), static_cast<int>(n),
        static_cast<int>(num_clusters), static_cast<int>(iters), paper, scratch.ref(),
        medoids.mutable_data_ptr<int64_t>(), assignment.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {medoids, assignment};
}

}  // namespace

TOKRED_LIBRARY_IMPL(m) { m.impl("kmedoids", &kmedoids_cuda); }

}  // namespace tokred::cuda
