// K-Medoids clustering on the CPU (reference: tokred/reference/kmedoids.py).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>
#include <numeric>
#include <vector>

#include "../common.h"
#include "cpu_math.h"

namespace tokred::cpu {
namespace {

template <typename A>
struct Workspace {
  std::vector<A> xt, dist, cost, best_cost;
  std::vector<int64_t> order, best;
  Workspace(int64_t n, int64_t c, int64_t k) : xt(n * c), dist(n * n), cost(n), best_cost(k), order(n), best(k) {}
};

template <typename A>
void assign_nearest(const A* dist, int64_t n, const int64_t* medoids, int64_t k, int64_t* assignment) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t best = 0;
    for (int64_t q = 1; q < k; ++q)
      if (dist[i * n + medoids[q]] < dist[i * n + medoids[best]]) best = q;
    assignment[i] = best;
  }
}

// One image: x[N, C] and weights[N] in the accumulation type.
template <typename A>
void kmedoids_image(const A* x, const A* w, int64_t n, int64_t c, int64_t k, int64_t iters, bool paper,
                    Workspace<A>& ws, int64_t* medoids, int64_t* assignment) {
  A* dist = ws.dist.data();
  squared_distances(x, n, c, ws.xt.data(), dist);
  for (int64_t e = 0; e < n * n; ++e) dist[e] = std::sqrt(dist[e]);

  std::iota(ws.order.begin(), ws.order.end(), int64_t(0));
  std::partial_sort(ws.order.begin(), ws.order.begin() + k, ws.order.end(),
                    [&](int64_t a, int64_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); });
  std::copy(ws.order.begin(), ws.order.begin() + k, medoids);

  if (paper)  // w_i * sum_j D_ij never changes: computed once, not once per iteration and cluster
    for (int64_t i = 0; i < n; ++i) ws.cost[i] = w[i] * std::accumulate(dist + i * n, dist + (i + 1) * n, A(0));
  for (int64_t t = 0; t < iters; ++t) {
    assign_nearest(dist, n, medoids, k, assignment);
    if (!paper)
      for (int64_t i = 0; i < n; ++i) {
        A sum = 0;
        for (int64_t j = 0; j < n; ++j) sum += assignment[j] == assignment[i] ? dist[i * n + j] : A(0);
        ws.cost[i] = sum;
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
  assign_nearest(dist, n, medoids, k, assignment);
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
      Workspace<scalar_t> ws(n, c, num_clusters);
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
