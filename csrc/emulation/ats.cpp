// The CUDA kernels of ../cuda/ats.cu compiled as C++ over the CPU emulation: tokred_emu::ats_sample.
#include "cuda_emulation.h"

#include "../cuda/ats.cu"
