// Pairwise distances for the clustering kernels (see cpu_math.h): the Gram matrix of the centred tokens by
// register-tiled FMAs, then |a|² + |b|² - 2ab, recomputed from coordinate differences where that cancels.
#include <cstring>

#include "cpu_math.h"

namespace tokred::cpu {
namespace {

constexpr int64_t kTileRows = 6;  // a tile is 6 rows x 1 or 2 vectors of columns, accumulated in registers

// gram[i0 + r, j0 + l] = sum_k xt[k, i0 + r] xt[k, j0 + l] for r < kTileRows and l < Vectors * lanes: each
// entry one chain of FMAs over k in order.
template <int64_t Vectors, typename T>
inline void gram_tile(const T* __restrict xt, int64_t stride, int64_t c, int64_t i0, int64_t j0,
                      T* __restrict gram) {
  using V = Lanes<T>;
  constexpr int64_t lanes = kLanes<T>;
  V acc[kTileRows][Vectors] = {};
  for (int64_t k = 0; k < c; ++k) {
    const T* column = xt + k * stride;
    V b[Vectors];
    for (int64_t v = 0; v < Vectors; ++v) std::memcpy(&b[v], column + j0 + v * lanes, sizeof(V));
    for (int64_t r = 0; r < kTileRows; ++r) {
      const T a = column[i0 + r];
      for (int64_t v = 0; v < Vectors; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int64_t r = 0; r < kTileRows; ++r) std::memcpy(gram + (i0 + r) * stride + j0, acc[r], sizeof(acc[r]));
}

// gram[i, j] for the row blocks of kTileRows below `rows` and, in each, the vectors of columns from the one
// holding the block's first diagonal entry up to `stride` (a multiple of the vector): the upper triangle and a
// little more. Every entry is one chain of FMAs over k in order, whatever tile it falls in: equal tokens get
// equal dot products and g_ij = g_ji exactly.
template <typename T>
void gram_upper_impl(const T* __restrict xt, int64_t stride, int64_t rows, int64_t c, T* __restrict gram) {
  constexpr int64_t lanes = kLanes<T>;
  for (int64_t i0 = 0; i0 < rows; i0 += kTileRows) {
    int64_t j0 = i0 / lanes * lanes;
    if ((j0 / lanes) % 2 != (stride / lanes) % 2) {  // an odd number of vectors: one single-vector tile first
      gram_tile<1>(xt, stride, c, i0, j0, gram);
      j0 += lanes;
    }
    for (; j0 < stride; j0 += 2 * lanes) gram_tile<2>(xt, stride, c, i0, j0, gram);
  }
}

constexpr int64_t round_up(int64_t value, int64_t step) { return (value + step - 1) / step * step; }

template <typename T>
void compute_distances(Distances<T>& out, const T* __restrict x, int64_t n, int64_t c, T scale) {
  const int64_t rows = round_up(n, kTileRows);
  const int64_t stride = out.stride = round_up(rows, kLanes<T>);
  out.xt.assign(c * stride, T(0));
  out.dist.resize(rows * stride);
  out.norms.resize(n);
  out.mean.assign(c, T(0));
  T* __restrict xt = out.xt.data();
  T* __restrict d = out.dist.data();
  T* __restrict norms = out.norms.data();
  T* __restrict mean = out.mean.data();

  // Centred (distances do not change, cancellation in |a|² + |b|² - 2ab shrinks) and transposed, a block of
  // rows at a time so that the writes stay within a few cache lines.
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < c; ++k) mean[k] += x[i * c + k];
  for (int64_t k = 0; k < c; ++k) mean[k] /= static_cast<T>(n);
  constexpr int64_t kBlock = 16;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i1 = std::min(n, i0 + kBlock);
    for (int64_t k = 0; k < c; ++k)
      for (int64_t i = i0; i < i1; ++i) xt[k * stride + i] = x[i * c + k] - mean[k];
  }
  gram_upper_impl(xt, stride, rows, c, d);
  for (int64_t i = 0; i < n; ++i) norms[i] = d[i * stride + i];

  // Row by row, the upper triangle's Gram entries become distances. Where |a - b|² is below
  // kCancellation (|a|² + |b|²), the expansion has lost too many digits: that pair is recomputed from
  // coordinate differences, so equal tokens are exactly 0 apart and every distance keeps a relative error of a
  // few ulps times sqrt(C).
  constexpr T kCancellation = T(1) / T(16);
  const auto cancelled = [&](T sq, int64_t i, int64_t j) { return !(sq > kCancellation * (norms[i] + norms[j])); };
  for (int64_t i = 0; i < n; ++i) {
    T* row = d + i * stride;
    bool any_cancelled = false;
    for (int64_t j = i + 1; j < n; ++j) {
      row[j] = norms[i] + norms[j] - T(2) * row[j];
      any_cancelled |= cancelled(row[j], i, j);
    }
    if (any_cancelled)
      for (int64_t j = i + 1; j < n; ++j) {
        if (!cancelled(row[j], i, j)) continue;
        T sq = 0;
        for (int64_t k = 0; k < c; ++k) {
          const T diff = xt[k * stride + i] - xt[k * stride + j];
          sq += diff * diff;
        }
        row[j] = sq;
      }
    row[i] = 0;
    for (int64_t j = i + 1; j < n; ++j) row[j] = std::sqrt(row[j]) * scale;
  }
  // Mirrored below the diagonal (no Gram entry is needed there), a block at a time.
  for (int64_t i0 = 0; i0 < n; i0 += kBlock)
    for (int64_t j0 = i0; j0 < n; j0 += kBlock)
      for (int64_t i = i0; i < std::min(n, i0 + kBlock); ++i)
        for (int64_t j = std::max(j0, i + 1); j < std::min(n, j0 + kBlock); ++j) d[j * stride + i] = d[i * stride + j];
}

}  // namespace

template <typename T>
void Distances<T>::compute(const T* x, int64_t n, int64_t c, T scale) {
  compute_distances(*this, x, n, c, scale);
}

template struct Distances<float>;
template struct Distances<double>;

}  // namespace tokred::cpu
