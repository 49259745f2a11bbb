// Pairwise squared distances for the clustering kernels (see cpu_math.h).
#include "cpu_math.h"

namespace tokred::cpu {
namespace {

// Rows are taken four at a time against a contiguous column of xt, so the inner loop over j vectorises.
template <typename T>
void squared_distances_impl(const T* __restrict x, int64_t n, int64_t c, T* __restrict xt, T* __restrict sq) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < c; ++k) xt[k * n + i] = x[i * c + k];
  std::fill(sq, sq + n * n, T(0));
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    T* d0 = sq + i * n;
    T* d1 = d0 + n;
    T* d2 = d1 + n;
    T* d3 = d2 + n;
    for (int64_t k = 0; k < c; ++k) {
      const T* col = xt + k * n;
      const T a0 = x[i * c + k], a1 = x[(i + 1) * c + k], a2 = x[(i + 2) * c + k], a3 = x[(i + 3) * c + k];
      for (int64_t j = i; j < n; ++j) {
        const T v = col[j];
        d0[j] += (a0 - v) * (a0 - v);
        d1[j] += (a1 - v) * (a1 - v);
        d2[j] += (a2 - v) * (a2 - v);
        d3[j] += (a3 - v) * (a3 - v);
      }
    }
  }
  for (; i < n; ++i) {
    T* d0 = sq + i * n;
    for (int64_t k = 0; k < c; ++k) {
      const T* col = xt + k * n;
      const T a0 = x[i * c + k];
      for (int64_t j = i; j < n; ++j) d0[j] += (a0 - col[j]) * (a0 - col[j]);
    }
  }
  for (int64_t r = 0; r < n; ++r) {  // mirror the upper triangle (the block rows also filled a few below it)
    sq[r * n + r] = T(0);
    for (int64_t j = r + 1; j < n; ++j) sq[j * n + r] = sq[r * n + j];
  }
}

}  // namespace

TOKRED_VECTOR_CLONES void squared_distances(const float* x, int64_t n, int64_t c, float* xt, float* sq) {
  squared_distances_impl(x, n, c, xt, sq);
}

TOKRED_VECTOR_CLONES void squared_distances(const double* x, int64_t n, int64_t c, double* xt, double* sq) {
  squared_distances_impl(x, n, c, xt, sq);
}

}  // namespace tokred::cpu
