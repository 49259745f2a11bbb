// DPC-KNN density-peak clustering on the CPU (reference: tokred/reference/dpc_knn.py).
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
  std::vector<A> xt, dist, nearest, density, score;
  std::vector<int64_t> order;
  Workspace(int64_t n, int64_t c, int64_t k) : xt(n * c), dist(n * n), nearest(k), density(n), score(n), order(n) {}
};

// One image: x[N, C] in the accumulation type, optional valid[N] and noise[N].
template <typename A>
void dpc_image(const A* x, const bool* valid, const A* noise, int64_t n, int64_t c, int64_t num_clusters,
               int64_t k_neighbors, Workspace<A>& ws, int64_t* centres, int64_t* assignment) {
  const auto ok = [&](int64_t i) { return valid == nullptr || valid[i]; };
  constexpr A inf = std::numeric_limits<A>::infinity();
  A* dist = ws.dist.data();
  distances(x, n, c, A(1) / std::sqrt(static_cast<A>(c)), ws.xt.data(), dist);

  // Density: exp(-mean squared distance to the k nearest valid tokens, the token itself included).
  const int64_t k = std::min(k_neighbors, n);
  for (int64_t i = 0; i < n; ++i) {
    int64_t found = 0;  // ws.nearest[0, found) holds the smallest distances so far, ascending
    for (int64_t j = 0; j < n; ++j) {
      if (!ok(j)) continue;
      const A d = dist[i * n + j];
      if (found == k && d >= ws.nearest[k - 1]) continue;
      int64_t p = found < k ? found++ : k - 1;
      for (; p > 0 && ws.nearest[p - 1] > d; --p) ws.nearest[p] = ws.nearest[p - 1];
      ws.nearest[p] = d;
    }
    A sum = 0;
    for (int64_t p = 0; p < found; ++p) sum += ws.nearest[p] * ws.nearest[p];
    ws.density[i] = std::exp(-sum / static_cast<A>(std::max<int64_t>(found, 1))) + (noise ? noise[i] : A(0));
  }

  // Parent distance: to the nearest denser valid token (equal density: the lower index is denser).
  A image_max = -inf;
  for (int64_t i = 0; i < n; ++i)
    if (ok(i))
      for (int64_t j = 0; j < n; ++j)
        if (ok(j)) image_max = std::max(image_max, dist[i * n + j]);
  for (int64_t i = 0; i < n; ++i) {
    if (!ok(i)) {
      ws.score[i] = -inf;
      continue;
    }
    const A rho = ws.density[i];
    A parent = inf;
    for (int64_t j = 0; j < n; ++j) {
      const A rho_j = ws.density[j];
      if (ok(j) && (rho_j > rho || (rho_j == rho && j < i))) parent = std::min(parent, dist[i * n + j]);
    }
    ws.score[i] = rho * (parent == inf ? image_max : parent);
  }

  // Centres: the K highest scores, lower index first on ties.
  std::iota(ws.order.begin(), ws.order.end(), int64_t(0));
  std::partial_sort(ws.order.begin(), ws.order.begin() + num_clusters, ws.order.end(), [&](int64_t a, int64_t b) {
    return ws.score[a] > ws.score[b] || (ws.score[a] == ws.score[b] && a < b);
  });
  std::copy(ws.order.begin(), ws.order.begin() + num_clusters, centres);

  // Assignment: nearest centre (lowest on ties); centres join themselves; masked tokens get -1.
  for (int64_t i = 0; i < n; ++i) {
    int64_t best = 0;
    for (int64_t q = 1; q < num_clusters; ++q)
      if (dist[centres[q] * n + i] < dist[centres[best] * n + i]) best = q;
    assignment[i] = best;
  }
  for (int64_t q = 0; q < num_clusters; ++q) assignment[centres[q]] = q;
  for (int64_t i = 0; i < n; ++i)
    if (!ok(i)) assignment[i] = -1;
}

std::tuple<at::Tensor, at::Tensor> dpc_knn_cpu(const at::Tensor& x_in, int64_t num_clusters, int64_t k_neighbors,
                                               const std::optional<at::Tensor>& mask_in,
                                               const std::optional<at::Tensor>& noise_in) {
  check_dpc_knn_args(x_in, num_clusters, k_neighbors, mask_in, noise_in);
  const int64_t b = x_in.size(0), n = x_in.size(1), c = x_in.size(2);
  const auto acc = accumulation_type(x_in.scalar_type());
  const auto x = x_in.to(acc).contiguous();
  at::Tensor mask, noise;
  if (mask_in) mask = mask_in->contiguous();
  if (noise_in) noise = noise_in->to(acc).contiguous();
  auto centres = at::empty({b, num_clusters}, x.options().dtype(at::kLong));
  auto assignment = at::empty({b, n}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(acc, "dpc_knn_cpu", [&] {
    const auto* xs = x.const_data_ptr<scalar_t>();
    const bool* ms = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
    const scalar_t* ns = noise.defined() ? noise.const_data_ptr<scalar_t>() : nullptr;
    auto* cs = centres.mutable_data_ptr<int64_t>();
    auto* as = assignment.mutable_data_ptr<int64_t>();
    at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
      Workspace<scalar_t> ws(n, c, std::min(k_neighbors, n));
      for (int64_t i = begin; i < end; ++i)
        dpc_image(xs + i * n * c, ms ? ms + i * n : nullptr, ns ? ns + i * n : nullptr, n, c, num_clusters,
                  k_neighbors, ws, cs + i * num_clusters, as + i * n);
    });
  });
  return {centres, assignment};
}

}  // namespace

TORCH_LIBRARY_IMPL(tokred, CPU, m) { m.impl("dpc_knn", &dpc_knn_cpu); }

}  // namespace tokred::cpu
