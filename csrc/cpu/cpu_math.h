// CPU building blocks shared by the kernels: a vectorisable exp and per-image pairwise distances.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

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
  using Lanes [[gnu::vector_size(64)]] = A;  // GCC does not vectorise a scalar max reduction by itself
  constexpr int64_t lanes = sizeof(Lanes) / sizeof(A);
  Lanes part;
  for (int64_t l = 0; l < lanes; ++l) part[l] = -std::numeric_limits<A>::infinity();
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) {
    Lanes x;
    std::memcpy(&x, p + j, sizeof(Lanes));
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

// Builds a function, with everything it calls inlined, for several instruction sets; the loader picks
// the best one the CPU has.
#define TOKRED_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))

// Squared Euclidean distances sq[N, N] between the rows of x[N, C], from coordinate differences
// (sq_ii = 0 exactly, equal rows give exact zeros). xt[C, N] is scratch. Defined in pairwise.cpp.
void squared_distances(const float* x, int64_t n, int64_t c, float* xt, float* sq);
void squared_distances(const double* x, int64_t n, int64_t c, double* xt, double* sq);

// Euclidean distances dist[N, N] = sqrt(squared distances) * scale.
template <typename T>
inline void distances(const T* x, int64_t n, int64_t c, T scale, T* xt, T* dist) {
  squared_distances(x, n, c, xt, dist);
  for (int64_t e = 0; e < n * n; ++e) dist[e] = std::sqrt(dist[e]) * scale;
}

}  // namespace tokred::cpu
