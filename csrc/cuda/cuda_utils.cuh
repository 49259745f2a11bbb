// CUDA building blocks shared by the kernels: per-image scratch, warp and block reductions, top-K ranks and
// the tiled pairwise-distance kernel of DPC-KNN and K-Medoids.
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

  // This block's (image's) scratch.
  __device__ unsigned char* base() const {
    TOKRED_DYNAMIC_SHARED(tokred_dynamic_smem);
    return global ? global + static_cast<int64_t>(blockIdx.x) * bytes : tokred_dynamic_smem;
  }
};

// Per-image scratch of `bytes`: dynamic shared memory when it fits in kSharedLimit, else a slice of a global
// workspace. The workspace may be released once the kernel is queued: the caching allocator hands the memory out
// again only to work queued after it on the same stream.
class Scratch {
 public:
  static constexpr int64_t kSharedLimit = 40 * 1024;  // under the 48 KiB default, beside static shared memory

  Scratch(int64_t bytes_per_image, int64_t images, const at::Tensor& like) : bytes_(bytes_per_image) {
    if (bytes_ > kSharedLimit) workspace_ = at::empty({images * bytes_}, like.options().dtype(at::kByte));
  }
  size_t shared_bytes() const { return workspace_.defined() ? 0 : static_cast<size_t>(bytes_); }
  ScratchRef ref() const {
    return {workspace_.defined() ? workspace_.mutable_data_ptr<uint8_t>() : nullptr, bytes_};
  }

 private:
  int64_t bytes_;
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

constexpr int kTile = 32;         // output tiles of kTile x kTile distances
constexpr int kChunk = 32;        // channels staged in shared memory per step
constexpr int kTileThreads = 64;  // 8 x 8 threads with 4 x 4 distances each

// dist[b, i, j] = sqrt(sum_c (x[b, i, c] - x[b, j, c])^2) * scale for x[B, N, C], in the accumulation type A.
// One block per (image, upper-triangle tile): the tile and its mirror get the same values, so D is exactly
// symmetric, and its diagonal is exactly 0.
template <typename scalar_t, typename A>
__global__ __launch_bounds__(kTileThreads) void pairwise_distance_kernel(const scalar_t* __restrict__ x, int n, int c,
                                                                         int tiles_per_side, A scale,
                                                                         A* __restrict__ dist) {
  __shared__ A rows_i[kChunk][kTile + 1];  // [channel, row]: a thread reads 4 rows of one channel
  __shared__ A rows_j[kChunk][kTile + 1];
  const int tiles = tiles_per_side * (tiles_per_side + 1) / 2;
  const int64_t image = blockIdx.x / tiles;
  int tile = blockIdx.x % tiles, ti = 0;  // (ti, tj) with ti <= tj, row by row
  while (tile >= tiles_per_side - ti) tile -= tiles_per_side - ti++;
  const int tj = ti + tile;
  const int i0 = ti * kTile, j0 = tj * kTile;
  const scalar_t* xb = x + image * n * c;
  A* db = dist + image * n * n;
  const int tx = threadIdx.x % 8, ty = threadIdx.x / 8;  // rows i0 + ty + 8 r, columns j0 + tx + 8 s

  A acc[4][4] = {};
  for (int c0 = 0; c0 < c; c0 += kChunk) {
    for (int e = threadIdx.x; e < kTile * kChunk; e += kTileThreads) {  // consecutive threads: consecutive channels
      const int row = e / kChunk, ch = e % kChunk, gc = c0 + ch;
      const int gi = i0 + row, gj = j0 + row;
      rows_i[ch][row] = gi < n && gc < c ? static_cast<A>(xb[gi * c + gc]) : A(0);
      rows_j[ch][row] = gj < n && gc < c ? static_cast<A>(xb[gj * c + gc]) : A(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int ch = 0; ch < kChunk; ++ch) {
      A a[4], b[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        a[r] = rows_i[ch][ty + 8 * r];
        b[r] = rows_j[ch][tx + 8 * r];
      }
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          const A d = a[r] - b[s];
          acc[r][s] += d * d;
        }
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const int i = i0 + ty + 8 * r, j = j0 + tx + 8 * s;
      if (i >= n || j >= n) continue;
      const A value = i == j ? A(0) : sqrt(acc[r][s]) * scale;
      db[i * n + j] = value;
      if (ti != tj) db[j * n + i] = value;
    }
}

// Distances [B, N, N] in the accumulation type between the rows of x[B, N, C] (contiguous), divided by sqrt(C)
// when over_sqrt_c (the scale computed in the accumulation type, as the CPU kernel does).
inline at::Tensor pairwise_distances(const at::Tensor& x, bool over_sqrt_c) {
  const int64_t b = x.size(0), n = x.size(1), c = x.size(2);
  check_int_range(n * n, "N * N");
  check_int_range(n * c, "N * C");
  auto dist = at::empty({b, n, n}, x.options().dtype(accumulation_type(x.scalar_type())));
  const int64_t side = (n + kTile - 1) / kTile;
  const int64_t blocks = b * (side * (side + 1) / 2);
  check_int_range(blocks, "B * tiles");
  if (blocks == 0) return dist;
  TOKRED_DISPATCH_FLOATING(x.scalar_type(), "tokred_pairwise_distance", [&] {
    using A = acc_t<scalar_t>;
    const A scale = over_sqrt_c ? A(1) / std::sqrt(static_cast<A>(c)) : A(1);
    TOKRED_LAUNCH(static_cast<unsigned>(blocks), kTileThreads, 0, pairwise_distance_kernel<scalar_t, A>)(
        x.const_data_ptr<scalar_t>(), static_cast<int>(n), static_cast<int>(c), static_cast<int>(side),
        scale, dist.mutable_data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dist;
}

}  // namespace
}  // namespace tokred::cuda
