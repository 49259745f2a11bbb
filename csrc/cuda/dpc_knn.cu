// DPC-KNN density-peak clustering on CUDA (reference: tokred/reference/dpc_knn.py, CPU twin: cpu/dpc_knn.cpp).
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../common.h"
#include "cuda_utils.cuh"

namespace tokred::cuda {
namespace {

// One block per image, after the distances dist[B, N, N] / sqrt(C) (exactly symmetric, so column i is row i
// and the loops over tokens read coalesced columns). mask[B, N] and noise[B, N] may be null.
// Scratch: density[N], score[N] (A), centre[K] (int) and smallest[k_nearest, kThreads] (A).
// The CPU kernel's algorithm: one token per thread (a lane there), its loop over j in order.
template <typename A>
__global__ __launch_bounds__(kThreads) void dpc_knn_kernel(const A* __restrict__ dist, const bool* __restrict__ mask,
                                                           const A* __restrict__ noise, int n, int num_clusters,
                                                           int k_nearest, ScratchRef scratch,
                                                           int64_t* __restrict__ centres,
                                                           int64_t* __restrict__ assignment) {
  __shared__ A max_shared[kWarps];
  const int64_t image = blockIdx.x;
  const A* d = dist + image * n * n;
  const bool* valid = mask ? mask + image * n : nullptr;
  const auto ok = [&](int i) { return valid == nullptr || valid[i]; };
  ScratchCursor cursor(scratch.base());
  A* density = cursor.take<A>(n);
  A* score = cursor.take<A>(n);
  int* centre = cursor.take<int>(num_clusters);
  A* smallest = cursor.take<A>(static_cast<int64_t>(k_nearest) * kThreads) + threadIdx.x;  // [p * kThreads]

  // Density: exp(-mean squared distance to the k nearest valid tokens, the token itself included), from a
  // sorting network that keeps the k smallest so far, ascending; on the way, the largest distance between valid
  // tokens. k_nearest = min(k_neighbors, N). O(k N) per token.
  A local_max = -infinity<A>();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    for (int p = 0; p < k_nearest; ++p) smallest[p * kThreads] = infinity<A>();
    A largest = -infinity<A>();
    for (int j = 0; j < n; ++j) {
      if (!ok(j)) continue;
      A v = d[j * n + i];
      largest = v > largest ? v : largest;
      for (int p = 0; p < k_nearest; ++p) {
        const A kept = smallest[p * kThreads];
        const bool below = v < kept;
        smallest[p * kThreads] = below ? v : kept;
        v = below ? kept : v;
      }
    }
    A sum = 0, found = 0;
    for (int p = 0; p < k_nearest; ++p) {
      const A nearest = smallest[p * kThreads];
      const bool finite = nearest < infinity<A>();
      sum += finite ? nearest * nearest : A(0);
      found += finite ? A(1) : A(0);
    }
    density[i] = exp_acc(-sum / (found > A(1) ? found : A(1))) + (noise ? noise[image * n + i] : A(0));
    if (ok(i)) local_max = largest > local_max ? largest : local_max;
  }
  const A image_max = block_max(local_max, max_shared);  // also the barrier after the densities

  // Parent distance: to the nearest denser valid token (equal density: the lower index is denser); the densest
  // token's is the largest distance between valid tokens. O(N^2).
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const A rho = density[i];
    A parent = infinity<A>();
    for (int j = 0; j < n; ++j) {
      if (!ok(j)) continue;
      const A rho_j = density[j], dji = d[j * n + i];
      if ((rho_j > rho || (rho_j == rho && j < i)) && dji < parent) parent = dji;
    }
    score[i] = ok(i) ? rho * (parent == infinity<A>() ? image_max : parent) : -infinity<A>();
  }
  __syncthreads();

  // Centres: the K highest scores, lower index first on ties.
  top_k_by_rank(score, n, num_clusters, centre);
  __syncthreads();

  // Assignment: nearest centre (lowest on ties), then centres join themselves and masked tokens get -1.
  int64_t* own = assignment + image * n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    int best = 0;
    A best_dist = d[centre[0] * n + i];
    for (int q = 1; q < num_clusters; ++q) {
      const A dq = d[centre[q] * n + i];
      if (dq < best_dist) {
        best = q;
        best_dist = dq;
      }
    }
    own[i] = ok(i) ? best : -1;
  }
  __syncthreads();
  for (int q = threadIdx.x; q < num_clusters; q += blockDim.x) {
    const int token = centre[q];
    centres[image * num_clusters + q] = token;
    if (ok(token)) own[token] = q;
  }
}

std::tuple<at::Tensor, at::Tensor> dpc_knn_cuda(const at::Tensor& x_in, int64_t num_clusters, int64_t k_neighbors,
                                                const std::optional<at::Tensor>& mask_in,
                                                const std::optional<at::Tensor>& noise_in) {
  check_dpc_knn_args(x_in, num_clusters, k_neighbors, mask_in, noise_in);
  const int64_t b = x_in.size(0), n = x_in.size(1);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto acc = accumulation_type(x_in.scalar_type());
  const auto x = x_in.contiguous();
  at::Tensor mask, noise;
  if (mask_in) mask = mask_in->contiguous();
  if (noise_in) noise = noise_in->to(acc).contiguous();
  auto centres = at::empty({b, num_clusters}, x.options().dtype(at::kLong));
  auto assignment = at::empty({b, n}, x.options().dtype(at::kLong));
  if (b == 0) return {centres, assignment};
  const auto dist = pairwise_distances(x, /*over_sqrt_c=*/true);
  AT_DISPATCH_FLOATING_TYPES(acc, "dpc_knn_cuda", [&] {
    const int64_t k_nearest = std::min<int64_t>(k_neighbors, n);
    const Scratch scratch(2 * aligned_bytes<scalar_t>(n) + aligned_bytes<int>(num_clusters) +
                              aligned_bytes<scalar_t>(k_nearest * kThreads),
                          b, x);
    TOKRED_LAUNCH(static_cast<unsigned>(b), kThreads, scratch.shared_bytes(), dpc_knn_kernel<scalar_t>)(
        dist.const_data_ptr<scalar_t>(), mask.defined() ? mask.const_data_ptr<bool>() : nullptr,
        noise.defined() ? noise.const_data_ptr<scalar_t>() : nullptr, static_cast<int>(n),
        static_cast<int>(num_clusters), static_cast<int>(k_nearest), scratch.ref(),
        centres.mutable_data_ptr<int64_t>(), assignment.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {centres, assignment};
}

}  // namespace

TOKRED_LIBRARY_IMPL(m) { m.impl("dpc_knn", &dpc_knn_cuda); }

}  // namespace tokred::cuda
