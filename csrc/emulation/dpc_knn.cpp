// The CUDA kernels of ../cuda/dpc_knn.cu compiled as C++ over the CPU emulation: tokred_emu::dpc_knn.
#include "cuda_emulation.h"

#include "../cuda/dpc_knn.cu"
