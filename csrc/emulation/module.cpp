// tokred._C_emulated: the tokred_emu library. Its ops are tokred's (schemas.h), whose CPU kernels are the CUDA kernels
// run by the emulation (registered by <op>.cpp here), and two test ops of the emulator itself.
#include "cuda_emulation.h"

#include <Python.h>
#include <torch/library.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <string_view>

#include "../schemas.h"

namespace tokred::emulation {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// Every thread keeps the value its shuffle read, of 4 bytes (int) and of 8 (double): out[2, threads].
__global__ void shuffle_kernel(ShuffleMode mode, int b, int width, int64_t* out) {
  const int t = static_cast<int>(threadIdx.x);
  const double v = t + 0.25;
  int got = 0;
  double got_double = 0;
  switch (mode) {
    case ShuffleMode::kIdx:
      got = __shfl_sync(kFullMask, t, b, width);
      got_double = __shfl_sync(kFullMask, v, b, width);
      break;
    case ShuffleMode::kUp:
      got = __shfl_up_sync(kFullMask, t, b, width);
      got_double = __shfl_up_sync(kFullMask, v, b, width);
      break;
    case ShuffleMode::kDown:
      got = __shfl_down_sync(kFullMask, t, b, width);
      got_double = __shfl_down_sync(kFullMask, v, b, width);
      break;
    case ShuffleMode::kXor:
      got = __shfl_xor_sync(kFullMask, t, b, width);
      got_double = __shfl_xor_sync(kFullMask, v, b, width);
      break;
  }
  out[t] = got;
  out[blockDim.x + t] = static_cast<int64_t>(got_double - 0.25);
}

// For each shuffle, the lane each of two warps' lanes read: [2 (int, double), 64].
at::Tensor test_shuffle(c10::string_view intrinsic, int64_t b, int64_t width) {
  int mode = 0;
  while (mode < 4 && shuffle_name(static_cast<ShuffleMode>(mode)) != intrinsic) ++mode;
  TORCH_CHECK(mode < 4, "tokred_emu::test_shuffle: unknown intrinsic '", intrinsic, "'");
  constexpr int threads = 64;
  auto out = at::empty({2, threads}, at::TensorOptions().dtype(at::kLong));
  TOKRED_LAUNCH(1, threads, 0, shuffle_kernel)(static_cast<ShuffleMode>(mode), static_cast<int>(b),
                                               static_cast<int>(width), out.mutable_data_ptr<int64_t>());
  return out;
}

// Kernels with a bug the emulator must report, one per case.
enum class Fault { kSkippedBarrier, kSplitBarrier, kSkippedShuffle, kPartialMask, kShuffle, kSkippedSyncwarp };

__global__ void fault_kernel(Fault fault, int* sink) {
  const int t = static_cast<int>(threadIdx.x);
  switch (fault) {
    case Fault::kSkippedBarrier:  // threads 100.. exit without reaching it
      if (t < 100) __syncthreads();
      break;
    case Fault::kSplitBarrier:  // odd and even threads wait at different barriers
      if (t % 2)
        __syncthreads();
      else
        __syncthreads();
      break;
    case Fault::kSkippedShuffle:  // lanes 16..31 of every warp exit without it
      if (t % warpSize < 16) sink[t] = __shfl_xor_sync(kFullMask, t, 1);
      break;
    case Fault::kPartialMask:
      sink[t] = __shfl_xor_sync(0x0000ffffu, t, 1);
      break;
    case Fault::kShuffle:  // fine, unless the block is not whole warps
      sink[t] = __shfl_xor_sync(kFullMask, t, 1);
      break;
    case Fault::kSkippedSyncwarp:  // lane 0 of every warp exits without it
      if (t % warpSize) __syncwarp();
      break;
  }
}

// Launches a faulty kernel (or a faulty launch): the launch must throw, and the next one work.
void test_fault(c10::string_view name) {
  struct Case {
    std::string_view name;
    Fault fault;
    unsigned blocks, threads;
    size_t shared_bytes;
  };
  constexpr Case cases[] = {
      {"skipped_barrier", Fault::kSkippedBarrier, 2, 256, 0},
      {"split_barrier", Fault::kSplitBarrier, 1, 256, 0},
      {"skipped_shuffle", Fault::kSkippedShuffle, 1, 64, 0},
      {"skipped_syncwarp", Fault::kSkippedSyncwarp, 1, 64, 0},
      {"partial_mask", Fault::kPartialMask, 1, 64, 0},
      {"partial_warp", Fault::kShuffle, 1, 48, 0},
      {"empty_grid", Fault::kShuffle, 0, 64, 0},
      {"too_many_threads", Fault::kShuffle, 1, 2048, 0},
      {"too_much_shared_memory", Fault::kShuffle, 1, 64, 64 * 1024},
  };
  for (const Case& c : cases) {
    if (c.name != name) continue;
    auto sink = at::empty({static_cast<int64_t>(c.threads)}, at::TensorOptions().dtype(at::kInt));
    TOKRED_LAUNCH(c.blocks, c.threads, c.shared_bytes, fault_kernel)(c.fault, sink.mutable_data_ptr<int>());
    return;
  }
  TORCH_CHECK(false, "tokred_emu::test_fault: unknown case '", name, "'");
}

}  // namespace
}  // namespace tokred::emulation

// `import tokred._C_emulated` loads this library, which registers the tokred_emu operators; the module is empty.
extern "C" PyObject* PyInit__C_emulated(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_emulated", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(tokred_emu, m) {
  tokred::define_ops(m);
  m.def("test_shuffle(str intrinsic, int b, int width) -> Tensor", &tokred::emulation::test_shuffle);
  m.def("test_fault(str case) -> ()", &tokred::emulation::test_fault);
}
