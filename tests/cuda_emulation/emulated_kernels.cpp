// The CUDA kernels of csrc/ops/cuda compiled as C++ and run on CPU threads (cuda_emulation.h),
// registered as the CPU implementation of fusionseg::inception_dwconv3d_* in a library that holds
// no other kernel. Built and loaded by tests/test_cuda_emulation.py in its own process, together
// with csrc/ops/inception_dwconv3d.cpp (schemas, argument checks).
#define FUSIONSEG_CUDA_EMULATION 1
#include "cuda_emulation.h"

#include "../../csrc/ops/cuda/inception_dwconv3d_kernel.cu"

// The op library's schema file reports a counter of the CPU kernel, which this library does not
// hold: the emulation has no CPU kernel, so the counter is always 0.
namespace fusionseg {
int64_t cpu_streaming_store_passes() { return 0; }
}  // namespace fusionseg
