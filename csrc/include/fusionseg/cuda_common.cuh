// What the CUDA kernel files (csrc/ops/cuda/*.cu) share: the launch macros that also build under
// the CPU emulation of tests/cuda_emulation, the current stream, the device guard, the 16-byte
// alignment check of vector paths and the warp sum.
//
// FUSIONSEG_CUDA_EMULATION: tests/cuda_emulation compiles a .cu file as C++ and runs each block's
// threads as CPU threads (barriers for __syncthreads, exchanges for shuffles) to check the kernels'
// logic on machines without a GPU. Only launches, dynamic shared memory, the runtime queries and
// the dispatch key differ between the two builds. FUSIONSEG_LAUNCH launches with the caller's
// `kThreads`; a kernel name with template arguments must be given as one token (a variable
// holding the instance), or the macro splits it at the comma.
#pragma once

#include <cstdint>
#include <initializer_list>

#ifndef FUSIONSEG_CUDA_EMULATION
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

#ifdef FUSIONSEG_CUDA_EMULATION
#define FUSIONSEG_DYNAMIC_SMEM(name) unsigned char* name = ::fusionseg_emulation::dynamic_smem()
#define FUSIONSEG_LAUNCH(kernel, blocks, smem, stream, ...) \
  ::fusionseg_emulation::launch(kernel, blocks, kThreads, smem, __VA_ARGS__)
#define FUSIONSEG_DEVICE_GUARD(x) (void)0
// The emulation library holds no CPU kernel: its CPU key runs the kernels on CPU threads.
#define FUSIONSEG_KERNELS_DISPATCH_KEY CPU
#else
#define FUSIONSEG_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#define FUSIONSEG_LAUNCH(kernel, blocks, smem, stream, ...) \
  kernel<<<blocks, kThreads, smem, stream>>>(__VA_ARGS__)
#define FUSIONSEG_DEVICE_GUARD(x) const c10::cuda::CUDAGuard device_guard((x).device())
// The key the kernels of a .cu file register under (TORCH_LIBRARY_IMPL(fusionseg, <this>, m)).
#define FUSIONSEG_KERNELS_DISPATCH_KEY CUDA
#endif

namespace fusionseg {
namespace cuda_common {

#ifdef FUSIONSEG_CUDA_EMULATION
inline int current_stream() { return 0; }
#else
inline c10::cuda::CUDAStream current_stream() { return c10::cuda::getCurrentCUDAStream(); }
#endif

// Whether every pointer is 16-byte aligned (the vector loads and stores need it).
inline bool is_aligned16(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// The sum of v over the 32 lanes of a warp, on every lane (butterfly: a fixed order).
template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace cuda_common
}  // namespace fusionseg
