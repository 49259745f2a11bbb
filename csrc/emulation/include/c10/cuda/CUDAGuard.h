// Stand-in for c10's CUDA device guard under the CPU emulation (../../../cuda_emulation.h): the tensors are on the
// CPU, so there is no device to switch to.
#pragma once

#include <c10/core/Device.h>

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
