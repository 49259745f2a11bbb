// Stand-in for ATen's CUDA context under the CPU emulation (../../../cuda_emulation.h): the stream a kernel file
// names exists but is unused, since an emulated launch runs to its end before it returns, and so does the launch
// check, since an emulated launch throws its errors itself.
#pragma once

#include "../../../cuda_emulation.h"

using cudaStream_t = struct CUstream_st*;

namespace at::cuda {
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace at::cuda

#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (false)
