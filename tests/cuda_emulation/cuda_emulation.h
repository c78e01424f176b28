// A minimal CUDA execution model on CPU threads, to run csrc/ops/cuda/*.cu kernels compiled as
// C++ (FUSIONSEG_CUDA_EMULATION) on machines without a GPU. Blocks run one after another; the
// threads of a block are real std::threads, so __syncthreads is a barrier and a warp shuffle an
// exchange between the 32 threads of a warp. Shared memory is filled with NaN bytes before each
// block, so a kernel that reads shared memory it did not write gets NaNs in its results.
// It checks the kernels' logic (tiling, indexing, synchronisation structure, reductions), not
// their timing, memory model or races.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) alignas(n)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)
#define C10_CUDA_CHECK(expr) ((void)(expr))

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
struct EmuIndex {
  unsigned x = 0, y = 0, z = 0;
};

inline thread_local EmuIndex threadIdx;
inline EmuIndex blockIdx;  // blocks run one at a time
inline EmuIndex blockDim;

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

namespace fusionseg_emulation {

struct BlockState {
  std::unique_ptr<std::barrier<>> block_barrier;
  std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
  std::vector<double> exchange;  // one slot per thread
  std::vector<unsigned char> smem;
};

inline BlockState& state() {
  static BlockState s;
  return s;
}

inline size_t& smem_optin_bytes() {
  static size_t v = 99 * 1024;  // sm_86/sm_89's opt-in limit: the smallest of the targets
  return v;
}
inline size_t smem_optin() { return smem_optin_bytes(); }

inline void check_dynamic_smem(size_t bytes) {
  if (bytes > smem_optin())
    throw std::runtime_error("emulated launch asks for more dynamic shared memory than the device has");
}

inline unsigned char* dynamic_smem() { return state().smem.data(); }

template <typename Kernel, typename... Args>
void launch(Kernel kernel, unsigned blocks, int threads, size_t smem, Args... args) {
  check_dynamic_smem(smem);
  BlockState& st = state();
  blockDim.x = threads;
  for (unsigned b = 0; b < blocks; ++b) {
    blockIdx.x = b;
    st.smem.assign(smem + 16, 0xFF);  // 0xFFFF... is a NaN in every float type
    st.block_barrier = std::make_unique<std::barrier<>>(threads);
    st.warp_barriers.clear();
    for (int w = 0; w < threads / 32; ++w)
      st.warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    st.exchange.assign(threads, 0.0);
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        threadIdx.x = t;
        kernel(args...);
        // An exited thread no longer takes part in barriers (as on the GPU).
        st.warp_barriers[t / 32]->arrive_and_drop();
        st.block_barrier->arrive_and_drop();
      });
    }
    for (auto& th : pool) th.join();
  }
}

}  // namespace fusionseg_emulation

inline void __syncthreads() { fusionseg_emulation::state().block_barrier->arrive_and_wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned /*mask: all lanes in this code*/, T v, int lane_mask) {
  auto& st = fusionseg_emulation::state();
  const int t = static_cast<int>(threadIdx.x);
  auto& bar = *st.warp_barriers[t / 32];
  st.exchange[t] = static_cast<double>(v);
  bar.arrive_and_wait();
  const T r = static_cast<T>(st.exchange[(t & ~31) | ((t & 31) ^ lane_mask)]);
  bar.arrive_and_wait();
  return r;
}
