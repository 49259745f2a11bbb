// CUDA emulation on the CPU: the kernels of csrc/cuda compile as plain C++ (g++) over this header and their device
// code runs on the CPU, so that the tests check it where no GPU exists. Each op's .cpp here includes this header,
// then ../cuda/<op>.cu; include/ holds stand-ins for the CUDA and ATen-CUDA headers the .cu files include, and the end
// of this file defines the three hooks of cuda_utils.cuh (launch, dynamic shared memory, registration: the CPU key of
// the tokred_emu library). tokred._C_emulated carries the result; tokred/emulation.py puts its kernels in place of
// tokred's CPU kernels: the tests' `cuda_emulation` device, whose tests `pytest -m cuda_emulation` runs alone.
//
// What is emulated, as the kernels use it:
// - the keywords (__global__, __device__, __host__, __forceinline__, __launch_bounds__, __align__; __restrict__ is
//   g++'s own), dim3 and the built-in variables threadIdx, blockIdx, blockDim, gridDim, warpSize;
// - a launch, TOKRED_LAUNCH(grid, block, shared_bytes, kernel)(args...): the arguments are copied once, the blocks
//   run one after another, the threads of a block are fibers (one stack each) scheduled cooperatively on the calling
//   thread: each runs until it waits at a barrier or exits, then the next ready one runs. Launches run one at a time
//   in the process. The launch limits of a GPU are checked (1 to 1024 threads per block, a non-empty grid, at most
//   48 KiB of dynamic shared memory) and the kernel's name appears in every error;
// - __syncthreads(): every thread of the block must reach it, at the same line;
// - __syncwarp() and the shuffles __shfl_sync, __shfl_up_sync, __shfl_down_sync, __shfl_xor_sync (with width), as
//   PTX's shfl.sync defines them: every lane of the warp must reach one, through the same intrinsic. Only the full
//   mask is emulated (another one is refused), so a block's threads must be a multiple of 32;
// - __shared__ variables: one copy, used by each block in turn; dynamic shared memory: one buffer per launch, filled
//   with 0xff bytes (NaN for floats, -1 for ints) before each block, so that a read before a write shows;
// - the math of CUDA's device library that the kernels call (std's overloads in the global namespace, as CUDA's).
// A barrier that not every thread reaches is a bug of the kernel: the launch ends with an error naming the barrier
// and the threads where each one waits or that exited, instead of hanging. So does an exception in device code.
//
// What is not emulated: the memory model (threads run one at a time, so a race between threads of a block that lack
// a barrier goes unnoticed, and so does a race between blocks), timing and occupancy, warp divergence as the hardware
// executes it (lanes run one after another between barriers), streams and asynchrony (a launch returns when done),
// atomics, warp votes, cooperative groups, textures, and CUDA's own rounding of expf/logf (the host libm's is used).
// Host code runs as written on CPU tensors: at::empty and any ATen call of a kernel file run on the CPU.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstring>
#include <source_location>
#include <tuple>
#include <type_traits>
#include <utility>

#define TOKRED_CUDA_EMULATION 1

// -------------------------------------------------------------------------------------------------- keywords

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One copy for all blocks: they run one after another.
#define __shared__ static

// ----------------------------------------------------------------------------------- built-in types, variables

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Those of the running (emulated) thread: set by the scheduler whenever it switches threads.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

// The device library's overloads (sqrt(float) is a float, as in CUDA), in the global namespace.
using std::exp;
using std::isnan;
using std::log;
using std::sqrt;

namespace tokred::emulation {

enum class ShuffleMode { kIdx, kUp, kDown, kXor };

// The runtime (runtime.cpp). Barriers and shuffles are called by the running emulated thread.
void sync_block(const std::source_location& where);
void sync_warp(unsigned mask, const std::source_location& where);
// Puts this lane's `size` bytes at `value` into the warp's exchange, waits for every lane, and returns where the
// bytes of the lane this one reads lie (valid until this lane's next shuffle).
const void* shuffle_exchange(const void* value, size_t size, ShuffleMode mode, unsigned mask, int b, int width,
                             const std::source_location& where);
unsigned char* dynamic_shared_memory();
const char* shuffle_name(ShuffleMode mode);  // "__shfl_up_sync", ...

struct LaunchConfig {
  dim3 grid, block;
  size_t shared_bytes;
  const char* kernel;  // its name as the launch spells it
  std::source_location where;
};
// Runs body(context) as every thread of every block of the grid; returns when all are done, throws on an error.
void run_grid(const LaunchConfig& config, void (*body)(void*), void* context);

template <typename T>
T shuffle(ShuffleMode mode, unsigned mask, T var, int b, int width, const std::source_location& where) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "CUDA shuffles values of at most 8 bytes");
  T out;
  std::memcpy(&out, shuffle_exchange(&var, sizeof(T), mode, mask, b, width, where), sizeof(T));
  return out;
}

// kernel<<<grid, block, shared_bytes>>>(args...): the arguments become the kernel's parameters once; each thread
// calls the kernel with its own copy of them, as CUDA threads each read the launch's parameters.
template <typename... Params>
class Launch {
 public:
  Launch(const LaunchConfig& config, void (*kernel)(Params...)) : config_(config), kernel_(kernel) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    struct Frame {
      void (*kernel)(Params...);
      std::tuple<Params...> params;
    } frame{kernel_, std::tuple<Params...>(std::forward<Args>(args)...)};
    run_grid(config_, [](void* p) {
      auto* f = static_cast<Frame*>(p);
      std::apply(f->kernel, f->params);
    }, &frame);
  }

 private:
  LaunchConfig config_;
  void (*kernel_)(Params...);
};

template <typename... Params>
Launch<Params...> launch(dim3 grid, dim3 block, size_t shared_bytes, const char* name, void (*kernel)(Params...),
                         std::source_location where = std::source_location::current()) {
  return Launch<Params...>({grid, block, shared_bytes, name, where}, kernel);
}

}  // namespace tokred::emulation

// ------------------------------------------------------------------------------------------ barriers, shuffles

inline void __syncthreads(std::source_location where = std::source_location::current()) {
  tokred::emulation::sync_block(where);
}

inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location where = std::source_location::current()) {
  tokred::emulation::sync_warp(mask, where);
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
              std::source_location where = std::source_location::current()) {
  return tokred::emulation::shuffle(tokred::emulation::ShuffleMode::kIdx, mask, var, src_lane, width, where);
}

template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                 std::source_location where = std::source_location::current()) {
  return tokred::emulation::shuffle(tokred::emulation::ShuffleMode::kUp, mask, var, static_cast<int>(delta), width,
                                    where);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                   std::source_location where = std::source_location::current()) {
  return tokred::emulation::shuffle(tokred::emulation::ShuffleMode::kDown, mask, var, static_cast<int>(delta), width,
                                    where);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                  std::source_location where = std::source_location::current()) {
  return tokred::emulation::shuffle(tokred::emulation::ShuffleMode::kXor, mask, var, lane_mask, width, where);
}

// --------------------------------------------------------------------------- the hooks of csrc/cuda/cuda_utils.cuh

#define TOKRED_LAUNCH(grid, block, shared_bytes, ...) \
  ::tokred::emulation::launch((grid), (block), (shared_bytes), #__VA_ARGS__, __VA_ARGS__)
#define TOKRED_DYNAMIC_SHARED(name) unsigned char* const name = ::tokred::emulation::dynamic_shared_memory()
#define TOKRED_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(tokred_emu, CPU, m)
