// The CUDA kernels of csrc/ops/cuda compiled as C++ and run on CPU threads (cuda_emulation.h),
// registered as the CPU implementation of fusionseg::inception_dwconv3d_* in a library that holds
// no other kernel. Built and loaded by tests/ops/test_cuda_emulation.py in its own process, together
// with csrc/ops/inception_dwconv3d.cpp (schemas, argument checks).
#define FUSIONSEG_CUDA_EMULATION 1
#include "cuda_emulation.h"

#include "../../csrc/ops/cuda/inception_dwconv3d_kernel.cu"
