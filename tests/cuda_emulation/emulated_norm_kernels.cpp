// The CUDA kernels of fusionseg::instance_norm_leaky_relu_* (csrc/ops/cuda) compiled as C++ and
// run on CPU threads (cuda_emulation.h), registered as the CPU implementation in the emulation
// library (see emulated_kernels.cpp; a translation unit of its own, as each .cu file is in the
// real build).
#define FUSIONSEG_CUDA_EMULATION 1
#include "cuda_emulation.h"

#include "../../csrc/ops/cuda/instance_norm_act_kernel.cu"
