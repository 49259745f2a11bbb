// The CUDA kernels of ../cuda/kmedoids.cu compiled as C++ over the CPU emulation: tokred_emu::kmedoids.
#include "cuda_emulation.h"

#include "../cuda/kmedoids.cu"
