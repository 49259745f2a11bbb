// CUDA building blocks shared by the kernels: per-image scratch, warp and block reductions, top-K ranks and
// the pairwise distances of DPC-KNN and K-Medoids.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "../common.h"

// The three hooks through which the kernel files launch, find dynamic shared memory and register: under nvcc the CUDA
// constructs; compiled as C++ over the CPU emulation (csrc/emulation/cuda_emulation.h, which defines them first) the
// emulator's launch and the CPU key of the tokred_emu library.
#ifndef TOKRED_CUDA_EMULATION
// TOKRED_LAUNCH(grid, block, shared_bytes, kernel)(args...) launches kernel on the current stream; kernel may be
// a template with several arguments.
#define TOKRED_LAUNCH(grid, block, shared_bytes, ...) \
  __VA_ARGS__<<<(grid), (block), (shared_bytes), ::tokred::cuda::current_stream()>>>
// Declares `name`, this block's dynamic shared memory (16-byte aligned).
#define TOKRED_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
// Registers a file's kernels: TOKRED_LIBRARY_IMPL(m) { m.impl(...); }
#define TOKRED_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(tokred, CUDA, m)
#endif

// Internal linkage: every kernel file gets its own copy of these kernels, so no kernel symbol is shared between
// the separately compiled device modules.
namespace tokred::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kThreads = 256;  // per-image kernels: one block of kThreads per image
constexpr int kWarps = kThreads / kWarpSize;
constexpr unsigned kFullMask = 0xffffffffu;

inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }

// Indices inside one image are int: the kernels index [N, N] and [K, N] matrices with 32-bit arithmetic.
inline void check_int_range(int64_t elements, const char* what) {
  TORCH_CHECK(elements <= INT_MAX, "tokred: ", what, " = ", elements, " is too large for the CUDA kernels");
}

template <typename A>
__device__ __forceinline__ A infinity() {
  return static_cast<A>(INFINITY);
}

// exp and log in the accumulation type: expf/logf for float, exp/log for double.
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
// x = m 2^e with m in [1/2, 1); and x 2^e.
__device__ __forceinline__ float frexp_acc(float x, int* e) { return frexpf(x, e); }
__device__ __forceinline__ double frexp_acc(double x, int* e) { return frexp(x, e); }
__device__ __forceinline__ float ldexp_acc(float x, int e) { return ldexpf(x, e); }
__device__ __forceinline__ double ldexp_acc(double x, int e) { return ldexp(x, e); }

// ------------------------------------------------------------------------------------------- scratch

// Bytes of `count` T's rounded up to 16, so consecutive scratch arrays stay aligned.
template <typename T>
__host__ __device__ constexpr int64_t aligned_bytes(int64_t count) {
  return (count * static_cast<int64_t>(sizeof(T)) + 15) / 16 * 16;
}

// What a kernel receives: where the scratch of each image lives.
struct ScratchRef {
  unsigned char* global;  // nullptr: dynamic shared memory
  int64_t bytes;          // per image
  int64_t shared_offset;  // where it starts in dynamic shared memory

  // This block's (image's) scratch.
  __device__ unsigned char* base() const {
    TOKRED_DYNAMIC_SHARED(tokred_dynamic_smem);
    return global ? global + static_cast<int64_t>(blockIdx.x) * bytes : tokred_dynamic_smem + shared_offset;
  }
};

// Per-image scratch of `bytes`: dynamic shared memory when it fits in kSharedLimit, else a slice of a global
// workspace. A second scratch of the same launch passes the first one's shared_bytes() as `shared_before`: it goes
// after it in shared memory when both fit, else to a workspace, and the launch takes the sum of their shared_bytes().
// The workspace may be released once the kernel is queued: the caching allocator hands the memory out again only to
// work queued after it on the same stream.
class Scratch {
 public:
  static constexpr int64_t kSharedLimit = 40 * 1024;  // under the 48 KiB default, beside static shared memory

  Scratch(int64_t bytes_per_image, int64_t images, const at::Tensor& like, size_t shared_before = 0)
      : bytes_(bytes_per_image), offset_(static_cast<int64_t>(shared_before)) {
    if (offset_ + bytes_ > kSharedLimit) workspace_ = at::empty({images * bytes_}, like.options().dtype(at::kByte));
  }
  size_t shared_bytes() const { return workspace_.defined() ? 0 : static_cast<size_t>(bytes_); }
  ScratchRef ref() const {
    return {workspace_.defined() ? workspace_.mutable_data_ptr<uint8_t>() : nullptr, bytes_, offset_};
  }

 private:
  int64_t bytes_;
  int64_t offset_;
  at::Tensor workspace_;
};

// Hands out consecutive aligned arrays of a scratch area.
class ScratchCursor {
 public:
  __device__ explicit ScratchCursor(unsigned char* base) : next_(base) {}
  template <typename T>
  __device__ T* take(int64_t count) {
    T* p = reinterpret_cast<T*>(next_);
    next_ += aligned_bytes<T>(count);
    return p;
  }

 private:
  unsigned char* next_;
};

// ----------------------------------------------------------------------------------------- reductions

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(kFullMask, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

// Lexicographic minimum of (value, index) over the warp; every lane gets it. Values must not be NaN.
template <typename T>
__device__ __forceinline__ void warp_argmin(T& value, int& index) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(kFullMask, value, offset);
    const int other_index = __shfl_xor_sync(kFullMask, index, offset);
    if (other < value || (other == value && other_index < index)) {
      value = other;
      index = other_index;
    }
  }
}

// The CPU kernels' lane_sum and lane_dot order (cpu/cpu_math.h): 16 partial sums, part[l] over the terms j = l (mod 16)
// of the full blocks of 16 in order and part[0] then over the terms after them, added in order to a total from 0.
// A half-warp computes sum_{j < n} term(j) so, its lane l holding part[l]; every lane of the half-warp gets the total.
// Every lane of the warp must call it (its two halves sum independently).
constexpr int kLaneSumWidth = 16;

template <typename A, typename Term>
__device__ A half_warp_lane_sum(int n, const Term& term) {
  const int lane = threadIdx.x % kLaneSumWidth;
  const int full = n - n % kLaneSumWidth;
  A part = 0;
  for (int j = lane; j < full; j += kLaneSumWidth) part += term(j);
  if (lane == 0)
    for (int j = full; j < n; ++j) part += term(j);
  A total = 0;
  for (int l = 0; l < kLaneSumWidth; ++l) total += __shfl_sync(kFullMask, part, l, kLaneSumWidth);
  return total;
}

// Maximum over the block of kThreads; every thread gets it. `shared` holds kWarps values.
template <typename T>
__device__ T block_max(T v, T* shared) {
  v = warp_max(v);
  if (threadIdx.x % kWarpSize == 0) shared[threadIdx.x / kWarpSize] = v;
  __syncthreads();
  T result = shared[0];
  for (int w = 1; w < kWarps; ++w) result = shared[w] > result ? shared[w] : result;
  __syncthreads();  // `shared` may be reused right after
  return result;
}

// Inclusive prefix sum over the block of kThreads (one value per thread, in thread order); `total` gets the
// block's sum. `shared` holds kWarps values.
__device__ inline int block_inclusive_scan(int v, int* shared, int& total) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const int other = __shfl_up_sync(kFullMask, v, offset);
    if (lane >= offset) v += other;
  }
  if (lane == kWarpSize - 1) shared[warp] = v;
  __syncthreads();
  total = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) v += shared[w];
    total += shared[w];
  }
  __syncthreads();  // `shared` may be reused right after
  return v;
}

// --------------------------------------------------------------------------------------------- top-K

// Whether (a, i) comes before (b, j) in descending order of value, lower index first on ties; NaN sorts first
// (as in torch.sort), so the order stays total and the ranks below a permutation.
template <typename A>
__device__ __forceinline__ bool precedes(A a, int i, A b, int j) {
  const bool a_nan = isnan(a), b_nan = isnan(b);
  if (a_nan || b_nan) return a_nan && (!b_nan || i < j);
  return a > b || (a == b && i < j);
}

// out[r] = the token of rank r < k by (key desc, index asc): each token counts the tokens before it. O(N^2).
template <typename A, typename Index>
__device__ void top_k_by_rank(const A* key, int n, int k, Index* out) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const A own = key[i];
    int rank = 0;
    for (int j = 0; j < n && rank < k; ++j) rank += precedes(key[j], j, own, i);
    if (rank < k) out[rank] = i;
  }
}

// ------------------------------------------------------------------------------------- pairwise distances
//
// The CPU kernels' algorithm (cpu/pairwise.cpp), step for step: the tokens centred in the accumulation type,
// their Gram matrix on and above the diagonal with every entry one chain of FMAs over the channels in order,
// then |a|² + |b|² - 2ab, recomputed from coordinate differences where that cancels.

constexpr int kTile = 32;         // output tiles of kTile x kTile distances
constexpr int kChunk = 32;        // channels staged in shared memory per step
constexpr int kTileThreads = 64;  // 8 x 8 threads with 4 x 4 distances each
constexpr int kCentreThreads = 128;

// xc[b, i, k] = x[b, i, k] - mean_i x[b, i, k] in A, the mean summed over i in order; norms[b, i] =
// sum_k xc[b, i, k]^2 in order. One thread per (image, channel), then one per (image, token).
template <typename scalar_t, typename A>
__global__ __launch_bounds__(kCentreThreads) void centre_kernel(const scalar_t* __restrict__ x, int64_t b, int n, int c,
                                                                A* __restrict__ xc) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= b * c) return;
  const int64_t image = e / c, k = e % c;
  const scalar_t* xb = x + image * n * c + k;
  A* out = xc + image * n * c + k;
  A mean = 0;
  for (int i = 0; i < n; ++i) mean += static_cast<A>(xb[static_cast<int64_t>(i) * c]);
  mean /= static_cast<A>(n);
  for (int i = 0; i < n; ++i) out[static_cast<int64_t>(i) * c] = static_cast<A>(xb[static_cast<int64_t>(i) * c]) - mean;
}

template <typename A>
__global__ __launch_bounds__(kCentreThreads) void squared_norms_kernel(const A* __restrict__ xc, int64_t rows, int c,
                                                                       A* __restrict__ norms) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const A* row = xc + r * c;
  A sum = 0;
  for (int k = 0; k < c; ++k) sum += row[k] * row[k];
  norms[r] = sum;
}

// dist[b, i, j] for the centred tokens xc[B, N, C] and their squared norms[B, N]: one block per (image,
// upper-triangle tile). The tile's Gram entries g_ij accumulate in registers; then sqrt(n_i + n_j - 2 g_ij) * scale,
// from coordinate differences where n_i + n_j - 2 g_ij <= (n_i + n_j) / 16, is written to the tile and its mirror:
// D is exactly symmetric and 0 on the diagonal.
template <typename A>
__global__ __launch_bounds__(kTileThreads) void distance_tile_kernel(const A* __restrict__ xc, const A* __restrict__ norms,
                                                                     int n, int c, int tiles_per_side, A scale,
                                                                     A* __restrict__ dist) {
  __shared__ A rows_i[kChunk][kTile + 1];  // [channel, row]: a thread reads 4 rows of one channel
  __shared__ A rows_j[kChunk][kTile + 1];
  const int tiles = tiles_per_side * (tiles_per_side + 1) / 2;
  const int64_t image = blockIdx.x / tiles;
  int tile = blockIdx.x % tiles, ti = 0;  // (ti, tj) with ti <= tj, row by row
  while (tile >= tiles_per_side - ti) tile -= tiles_per_side - ti++;
  const int tj = ti + tile;
  const int i0 = ti * kTile, j0 = tj * kTile;
  const A* xb = xc + image * n * c;
  const A* nb = norms + image * n;
  A* db = dist + image * n * n;
  const int tx = threadIdx.x % 8, ty = threadIdx.x / 8;  // rows i0 + ty + 8 r, columns j0 + tx + 8 s

  A acc[4][4] = {};
  for (int c0 = 0; c0 < c; c0 += kChunk) {
    for (int e = threadIdx.x; e < kTile * kChunk; e += kTileThreads) {  // consecutive threads: consecutive channels
      const int row = e / kChunk, ch = e % kChunk, gc = c0 + ch;
      const int gi = i0 + row, gj = j0 + row;
      rows_i[ch][row] = gi < n && gc < c ? xb[gi * c + gc] : A(0);
      rows_j[ch][row] = gj < n && gc < c ? xb[gj * c + gc] : A(0);
    }
    __syncthreads();
    const int chunk = c - c0 < kChunk ? c - c0 : kChunk;  // no padded channel enters a chain
    for (int ch = 0; ch < chunk; ++ch) {
      A a[4], b[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        a[r] = rows_i[ch][ty + 8 * r];
        b[r] = rows_j[ch][tx + 8 * r];
      }
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int s = 0; s < 4; ++s) acc[r][s] += a[r] * b[s];
    }
    __syncthreads();
  }
  const A cancellation = A(1) / A(16);
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const int i = i0 + ty + 8 * r, j = j0 + tx + 8 * s;
      if (i >= n || j >= n || j < i) continue;
      A value = 0;
      if (i != j) {
        A sq = nb[i] + nb[j] - A(2) * acc[r][s];
        if (!(sq > cancellation * (nb[i] + nb[j]))) {
          sq = 0;
          for (int k = 0; k < c; ++k) {
            const A diff = xb[i * c + k] - xb[j * c + k];
            sq += diff * diff;
          }
        }
        value = sqrt(sq) * scale;
      }
      db[i * n + j] = value;
      db[j * n + i] = value;
    }
}

// Distances [B, N, N] in the accumulation type between the rows of x[B, N, C] (contiguous), times 1/sqrt(C) when
// over_sqrt_c (computed in the accumulation type, as the CPU kernel does).
inline at::Tensor pairwise_distances(const at::Tensor& x, bool over_sqrt_c) {
  const int64_t b = x.size(0), n = x.size(1), c = x.size(2);
  check_int_range(n * n, "N * N");
  check_int_range(n * c, "N * C");
  const auto acc = accumulation_type(x.scalar_type());
  auto dist = at::empty({b, n, n}, x.options().dtype(acc));
  const int64_t side = (n + kTile - 1) / kTile;
  const int64_t blocks = b * (side * (side + 1) / 2);
  check_int_range(blocks, "B * tiles");
  check_int_range(b * c, "B * C");
  check_int_range(b * n, "B * N");
  if (blocks == 0) return dist;
  auto centred = at::empty({b, n, c}, dist.options());
  auto norms = at::empty({b, n}, dist.options());
  const auto grid = [](int64_t threads) { return static_cast<unsigned>((threads + kCentreThreads - 1) / kCentreThreads); };
  TOKRED_DISPATCH_FLOATING(x.scalar_type(), "tokred_pairwise_distance", [&] {
    using A = acc_t<scalar_t>;
    TOKRED_LAUNCH(grid(b * c), kCentreThreads, 0, centre_kernel<scalar_t, A>)(
        x.const_data_ptr<scalar_t>(), b, static_cast<int>(n), static_cast<int>(c), centred.mutable_data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    TOKRED_LAUNCH(grid(b * n), kCentreThreads, 0, squared_norms_kernel<A>)(
        centred.const_data_ptr<A>(), b * n, static_cast<int>(c), norms.mutable_data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const A scale = over_sqrt_c ? A(1) / std::sqrt(static_cast<A>(c)) : A(1);
    TOKRED_LAUNCH(static_cast<unsigned>(blocks), kTileThreads, 0, distance_tile_kernel<A>)(
        centred.const_data_ptr<A>(), norms.const_data_ptr<A>(), static_cast<int>(n), static_cast<int>(c),
        static_cast<int>(side), scale, dist.mutable_data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dist;
}

}  // namespace
}  // namespace tokred::cuda
