// K-Medoids clustering on the CPU (reference: tokred/reference/kmedoids.py).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "../common.h"
#include "cpu_math.h"

namespace tokred::cpu {
namespace {

template <typename A>
struct Workspace {
  Distances<A> distances;
  std::vector<A> cost, best_cost, nearest, order_key;
  std::vector<LaneIndex<A>> cluster;  // padded to whole vectors
  std::vector<int64_t> best;
  Workspace(int64_t n, int64_t k)
      : cost(n), best_cost(k), nearest(n), order_key(n), cluster(n + kLanes<A>), best(k) {}
};

// sums[i] = sum over j < N, in order, of D_ij, or of the D_ij with cluster[j] == cluster[i] when cluster (padded
// to whole vectors) is given. A vector of tokens at a time, reading D[j, i0 ..] (D is symmetric: column j of
// those rows), so every token's sum runs over j in order in its own lane.
template <typename A>
void distance_sums(const Distances<A>& dist, int64_t n, const LaneIndex<A>* cluster, A* sums) {
  constexpr int64_t lanes = kLanes<A>;
  for (int64_t i0 = 0; i0 < n; i0 += lanes) {
    Lanes<A> sum = {};
    if (cluster == nullptr) {
      for (int64_t j = 0; j < n; ++j) sum += load_lanes(dist.row(j) + i0);
    } else {
      const Lanes<LaneIndex<A>> own = load_lanes(cluster + i0);
      for (int64_t j = 0; j < n; ++j) sum += cluster[j] == own ? load_lanes(dist.row(j) + i0) : Lanes<A>{};
    }
    for (int64_t l = 0; l < lanes && i0 + l < n; ++l) sums[i0 + l] = sum[l];
  }
}

// One image: x[N, C] and weights[N] in the accumulation type.
template <typename A>
void kmedoids_image(const A* x, const A* w, int64_t n, int64_t c, int64_t k, int64_t iters, bool paper,
                    Workspace<A>& ws, int64_t* medoids, int64_t* assignment) {
  Distances<A>& dist = ws.distances;
  dist.compute(x, n, c, A(1));

  std::copy(w, w + n, ws.order_key.begin());
  top_k_by_rank(ws.order_key.data(), n, k, medoids);  // the K heaviest tokens, lower index first on ties

  if (paper) {  // w_i * sum_j D_ij never changes: computed once, not once per iteration and cluster
    distance_sums(dist, n, nullptr, ws.cost.data());
    for (int64_t i = 0; i < n; ++i) ws.cost[i] *= w[i];
  }
  for (int64_t t = 0; t < iters; ++t) {
    nearest_centre(dist, n, medoids, k, ws.nearest.data(), assignment);
    if (!paper) {  // the sum of distances to the members of the own cluster
      std::copy(assignment, assignment + n, ws.cluster.begin());
      distance_sums(dist, n, ws.cluster.data(), ws.cost.data());
    }
    std::fill(ws.best.begin(), ws.best.end(), int64_t(-1));
    for (int64_t i = 0; i < n; ++i) {  // segmented argmin: first member with the lowest cost
      const int64_t q = assignment[i];
      if (ws.best[q] < 0 || ws.cost[i] < ws.best_cost[q]) {
        ws.best[q] = i;
        ws.best_cost[q] = ws.cost[i];
      }
    }
    for (int64_t q = 0; q < k; ++q)
      if (ws.best[q] >= 0) medoids[q] = ws.best[q];  // an empty cluster keeps its medoid
  }
  nearest_centre(dist, n, medoids, k, ws.nearest.data(), assignment);
}

std::tuple<at::Tensor, at::Tensor> kmedoids_cpu(const at::Tensor& x_in, const at::Tensor& weights_in,
                                                int64_t num_clusters, int64_t iters, c10::string_view rule) {
  check_kmedoids_args(x_in, weights_in, num_clusters, iters);
  const int64_t b = x_in.size(0), n = x_in.size(1), c = x_in.size(2);
  const bool paper = kmedoids_paper(rule);
  const auto acc = accumulation_type(x_in.scalar_type());
  const auto x = x_in.to(acc).contiguous();
  const auto weights = weights_in.to(acc).contiguous();
  auto medoids = at::empty({b, num_clusters}, x.options().dtype(at::kLong));
  auto assignment = at::empty({b, n}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(acc, "kmedoids_cpu", [&] {
    const auto* xs = x.const_data_ptr<scalar_t>();
    const auto* ws_ = weights.const_data_ptr<scalar_t>();
    auto* ms = medoids.mutable_data_ptr<int64_t>();
    auto* as = assignment.mutable_data_ptr<int64_t>();
    at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
      Workspace<scalar_t> ws(n, num_clusters);
      for (int64_t i = begin; i < end; ++i)
        kmedoids_image(xs + i * n * c, ws_ + i * n, n, c, num_clusters, iters, paper, ws, ms + i * num_clusters,
                       as + i * n);
    });
  });
  return {medoids, assignment};
}

}  // namespace

TORCH_LIBRARY_IMPL(tokred, CPU, m) { m.impl("kmedoids", &kmedoids_cpu); }

}  // namespace tokred::cpu
