// The CUDA kernels of ../cuda/sinkhorn.cu compiled as C++ over the CPU emulation: tokred_emu::sinkhorn(_backward).
#include "cuda_emulation.h"

#include "../cuda/sinkhorn.cu"
