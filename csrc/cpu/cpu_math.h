// CPU building blocks shared by the kernels: a vectorisable exp, per-image pairwise distances and the nearest
// centre of each token.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace tokred::cpu {

// exp for float without a library call or branch, so loops over it vectorise (max. relative error ~2e-7).
inline float exp_approx(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest, no floor()
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;             // x - n ln2 in two parts (Cephes)
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}
inline double exp_approx(double x) { return std::exp(x); }

// One 512-bit register of T (two 256-bit ones on AVX2), for loops GCC does not vectorise by itself.
template <typename T>
using Lanes [[gnu::vector_size(64)]] = T;
template <typename T>
constexpr int64_t kLanes = sizeof(Lanes<T>) / sizeof(T);
template <typename T>
inline Lanes<T> load_lanes(const T* p) {
  Lanes<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The integer of T's width: Lanes<LaneIndex<T>> has as many lanes as Lanes<T> (and holds its comparisons).
template <typename T>
using LaneIndex = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;

// Sum and maximum over p[0, n) in 16 interleaved lanes, so the loops vectorise without -ffast-math.
template <typename A>
inline A lane_sum(const A* __restrict p, int64_t n) {
  constexpr int64_t lanes = 16;
  A part[lanes] = {};
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes)
    for (int64_t l = 0; l < lanes; ++l) part[l] += p[j + l];
  for (; j < n; ++j) part[0] += p[j];
  A total = 0;
  for (int64_t l = 0; l < lanes; ++l) total += part[l];
  return total;
}

template <typename A>
inline A lane_max(const A* __restrict p, int64_t n) {
  constexpr int64_t lanes = kLanes<A>;
  Lanes<A> part;
  for (int64_t l = 0; l < lanes; ++l) part[l] = -std::numeric_limits<A>::infinity();
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) {
    const Lanes<A> x = load_lanes(p + j);
    part = x > part ? x : part;
  }
  A best = part[0];
  for (int64_t l = 1; l < lanes; ++l) best = part[l] > best ? part[l] : best;
  for (; j < n; ++j) best = p[j] > best ? p[j] : best;
  return best;
}

// Dot product of p[0, n) and q[0, n) in 16 interleaved lanes (as lane_sum).
template <typename A>
inline A lane_dot(const A* __restrict p, const A* __restrict q, int64_t n) {
  constexpr int64_t lanes = 16;
  A part[lanes] = {};
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes)
    for (int64_t l = 0; l < lanes; ++l) part[l] += p[j + l] * q[j + l];
  for (; j < n; ++j) part[0] += p[j] * q[j];
  A total = 0;
  for (int64_t l = 0; l < lanes; ++l) total += part[l];
  return total;
}

// log for positive, normal float x without a library call or branch, so loops over it vectorise (Cephes' logf:
// absolute error < 1e-7 where |log x| < 1, relative error < 1e-7 elsewhere).
inline float log_approx(float x) {
  const int32_t bits = std::bit_cast<int32_t>(x);
  float e = static_cast<float>((bits >> 23) - 126);  // x = m 2^e with m in [0.5, 1)
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f000000);
  const bool low = m < 0.707106781186547524f;  // then m, e -> 2m, e - 1: m in [sqrt(1/2), sqrt(2))
  e = low ? e - 1.0f : e;
  m = (low ? m + m : m) - 1.0f;
  const float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  const float y = p * m * z - 2.12194440e-4f * e - 0.5f * z;
  return (m + y) + 0.693359375f * e;  // e ln 2 in two parts (Cephes)
}
inline double log_approx(double x) { return std::log(x); }


// The Euclidean distances of one image's tokens x[N, C] (row-major, contiguous), times scale:
// row(i)[j] for i, j < N; exactly symmetric, 0 on the diagonal and between equal tokens. Keeps its buffers
// from one image to the next. Defined in pairwise.cpp for float and double.
template <typename T>
struct Distances {
  std::vector<T> xt;     // [C, stride]: the centred tokens, transposed and zero-padded
  std::vector<T> dist;   // [rows, stride]: rows >= N, stride >= rows (multiples of the Gram tile)
  std::vector<T> norms;  // [N]: squared norms of the centred tokens
  std::vector<T> mean;   // [C]
  int64_t stride = 0;

  void compute(const T* x, int64_t n, int64_t c, T scale);
  const T* row(int64_t i) const { return dist.data() + i * stride; }
};

// assignment[i] = the q < K whose token centres[q] is nearest token i < N (the lowest q on ties), one centre's
// row at a time (the distances are symmetric). best[N] is scratch.
template <typename T>
void nearest_centre(const Distances<T>& dist, int64_t n, const int64_t* centres, int64_t k, T* best,
                    int64_t* assignment) {
  std::copy(dist.row(centres[0]), dist.row(centres[0]) + n, best);
  std::fill(assignment, assignment + n, int64_t(0));
  for (int64_t q = 1; q < k; ++q) {
    const T* row = dist.row(centres[q]);
    for (int64_t i = 0; i < n; ++i) {
      const bool closer = row[i] < best[i];
      best[i] = closer ? row[i] : best[i];
      assignment[i] = closer ? q : assignment[i];
    }
  }
}

// out[r] = the index of rank r < k among key[0, n) in descending order, lower index first on ties: each entry
// counts the entries before it, a vector at a time (O(N^2) branch-free compares beat a sort for a few hundred
// tokens). NaN keys are first changed to +inf in place, so the ranks stay a permutation.
template <typename T>
void top_k_by_rank(T* key, int64_t n, int64_t k, int64_t* out) {
  constexpr int64_t lanes = kLanes<T>;
  for (int64_t j = 0; j < n; ++j) key[j] = std::isnan(key[j]) ? std::numeric_limits<T>::infinity() : key[j];
  for (int64_t i = 0; i < n; ++i) {
    const T own = key[i];
    Lanes<LaneIndex<T>> before = {};  // minus the count of entries before own, per lane (a true compare is -1)
    int64_t j = 0, rank = 0;
    for (; j + lanes <= i; j += lanes) before += load_lanes(key + j) >= own;
    for (; j < i; ++j) rank += key[j] >= own;
    for (j = i + 1; j + lanes <= n; j += lanes) before += load_lanes(key + j) > own;
    for (; j < n; ++j) rank += key[j] > own;
    for (int64_t l = 0; l < lanes; ++l) rank -= before[l];
    if (rank < k) out[rank] = i;
  }
}

}  // namespace tokred::cpu
