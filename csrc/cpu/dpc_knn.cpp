// DPC-KNN density-peak clustering on the CPU (reference: tokred/reference/dpc_knn.py).
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
  std::vector<A> smallest;              // [k, lanes]: per lane, the k smallest distances so far, ascending
  std::vector<A> density, score, best;  // density padded to whole vectors
  Workspace(int64_t n, int64_t k) : smallest(k * kLanes<A>), density(n + kLanes<A>), score(n), best(n) {}
};

// One image: x[N, C] in the accumulation type, optional valid[N] and noise[N].
//
// Density and parent distance take the tokens a vector of lanes at a time (tokens i0 .. i0 + lanes - 1) and
// read, for every other token j, the vector D[j, i0 ..] (D is symmetric: it is column j of those rows), so
// each token's loop over j runs in order, branch-free, in its own lane.
template <typename A>
void dpc_image(const A* x, const bool* valid, const A* noise, int64_t n, int64_t c, int64_t num_clusters,
               int64_t k_neighbors, Workspace<A>& ws, int64_t* centres, int64_t* assignment) {
  using V = Lanes<A>;
  using Index = Lanes<LaneIndex<A>>;
  constexpr int64_t lanes = kLanes<A>;
  constexpr A inf = std::numeric_limits<A>::infinity();
  const auto ok = [&](int64_t i) { return valid == nullptr || valid[i]; };
  Distances<A>& dist = ws.distances;
  dist.compute(x, n, c, A(1) / std::sqrt(static_cast<A>(c)));
  const auto column = [&](int64_t j, int64_t i0) { return load_lanes(dist.row(j) + i0); };

  // Density: exp(-mean squared distance to the k nearest valid tokens, the token itself included), from a
  // sorting network per lane that keeps the k smallest; on the way, the largest distance between valid tokens.
  const int64_t k = std::min(k_neighbors, n);
  A* smallest = ws.smallest.data();
  A image_max = -inf;
  for (int64_t i0 = 0; i0 < n; i0 += lanes) {
    std::fill(ws.smallest.begin(), ws.smallest.end(), inf);
    V largest = V{} - inf;
    for (int64_t j = 0; j < n; ++j) {
      if (!ok(j)) continue;
      V v = column(j, i0);
      largest = v > largest ? v : largest;
      for (int64_t p = 0; p < k; ++p) {
        const V kept = load_lanes(smallest + p * lanes);
        const auto below = v < kept;
        const V low = below ? v : kept;
        v = below ? kept : v;
        std::memcpy(smallest + p * lanes, &low, sizeof(low));
      }
    }
    V sum = {}, found = {};
    for (int64_t p = 0; p < k; ++p) {
      const V d = load_lanes(smallest + p * lanes);
      const auto finite = d < inf;
      sum += finite ? d * d : V{};
      found += finite ? V{} + A(1) : V{};
    }
    for (int64_t l = 0; l < lanes && i0 + l < n; ++l) {
      const int64_t i = i0 + l;
      ws.density[i] = std::exp(-sum[l] / std::max(found[l], A(1))) + (noise ? noise[i] : A(0));
      if (ok(i)) image_max = std::max(image_max, largest[l]);
    }
  }

  // Parent distance: to the nearest denser valid token (equal density: the lower index is denser); the
  // densest token's is the largest distance between valid tokens.
  Index lane_index;
  for (int64_t l = 0; l < lanes; ++l) lane_index[l] = static_cast<LaneIndex<A>>(l);
  for (int64_t i0 = 0; i0 < n; i0 += lanes) {
    const V rho = load_lanes(ws.density.data() + i0);
    const Index own = lane_index + static_cast<LaneIndex<A>>(i0);
    V parent = V{} + inf;
    for (int64_t j = 0; j < n; ++j) {
      if (!ok(j)) continue;
      const V rho_j = V{} + ws.density[j];
      const auto denser = (rho_j > rho) | ((rho_j == rho) & (static_cast<LaneIndex<A>>(j) < own));
      const V v = column(j, i0);
      parent = denser & (v < parent) ? v : parent;
    }
    for (int64_t l = 0; l < lanes && i0 + l < n; ++l) {
      const int64_t i = i0 + l;
      ws.score[i] = ok(i) ? ws.density[i] * (parent[l] == inf ? image_max : parent[l]) : -inf;
    }
  }

  // Centres: the K highest scores, lower index first on ties.
  top_k_by_rank(ws.score.data(), n, num_clusters, centres);

  // Assignment: nearest centre (lowest on ties), a centre's row at a time; centres join themselves; masked
  // tokens get -1.
  nearest_centre(dist, n, centres, num_clusters, ws.best.data(), assignment);
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
      Workspace<scalar_t> ws(n, std::min(k_neighbors, n));
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
