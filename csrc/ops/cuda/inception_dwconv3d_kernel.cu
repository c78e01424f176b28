// Fused CUDA kernels for fusionseg::inception_dwconv3d_{forward,backward}.
//
// Forward: one launch, one pass over x. The grid is split into block ranges by role:
//   - identity blocks copy the first C - 4*gc channels (contiguous per sample) with 16-byte
//     vector loads/stores when the segments are aligned, scalar otherwise;
//   - one block range per convolution group: a block stages one tile of one (n, channel) plus
//     its halo in shared memory (converted to the accumulation type, zero outside the volume),
//     then each thread computes R consecutive outputs along a "blocking axis" from registers:
//     for each tap of the two other axes it loads a column of R + k - 1 values once and reuses
//     it for all k taps along the blocking axis (cube: along D; W/H/D strips: along their own
//     band axis).
// Backward: the same structure on dy with the kernels flipped (dx = conv(dy, flip(w))). For
// the released kernel sizes one launch computes dx and, from an x halo tile staged next to the
// dy halo tile, each block's partial sums of the weight and bias gradients (fp32 for
// fp32/fp16/bf16, fp64 for fp64), reduced in registers, then across warps in a fixed order;
// a second small kernel reduces the per-tile partials per channel in a fixed order (in double).
// No atomics: the gradients are bitwise deterministic.
//
// Kernel sizes: the released strips ((3,3,3), (1,1,11), (1,11,1), (11,1,1)) are template
// parameters (fully unrolled, weights in registers). Any other odd sizes (e.g. the plane
// variant) take the generic path: the same tiling with run-time kernel sizes, blocking along
// D, and a separate weight-gradient kernel. Tiles shrink (fewer active threads) until their
// halo fits the device's shared memory; kernels too large for that are refused with a message.
//
// Inputs are made contiguous (NCDHW); a channels_last_3d input therefore costs one copy in and
// the output one copy back (empty_like's layout rule, as the CPU backend).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "fusionseg/cuda_common.cuh"
#include "fusionseg/inception_dwconv3d.h"
#include "fusionseg/inception_dwconv3d_cuda_tiling.h"

// FUSIONSEG_CUDA_EMULATION (tests/cuda_emulation): see fusionseg/cuda_common.cuh.

namespace fusionseg {

#ifndef FUSIONSEG_CUDA_EMULATION
// Reported through build_info(): the CUDA runtime the library was compiled with and the
// architectures nvcc compiled device code for (__CUDA_ARCH_LIST__, e.g. 800,860,890,900).
std::string cuda_build_info_json() {
  std::ostringstream s;
  s << "{\"version\": \"" << CUDART_VERSION / 1000 << "." << (CUDART_VERSION % 1000) / 10
    << "\", \"archs\": [";
#ifdef __CUDA_ARCH_LIST__
  const int archs[] = {__CUDA_ARCH_LIST__};
  for (size_t i = 0; i < sizeof(archs) / sizeof(archs[0]); ++i)
    s << (i ? ", " : "") << archs[i] / 10;
#endif
  s << "]}";
  return s.str();
}
#endif

namespace {

using namespace cuda_tiling;
using namespace cuda_common;

// ------------------------------------------------------------------ compile-time shapes
// A group's kernel size, blocking axis and outputs per thread. KD == 0: sizes at run time.
template <int KD_, int KH_, int KW_, int AX_, int R_>
struct ConvSpec {
  static constexpr int KD = KD_, KH = KH_, KW = KW_, AX = AX_, R = R_;
  static constexpr bool kStatic = KD_ > 0;
  static constexpr int KVOL = kStatic ? KD_ * KH_ * KW_ : 1;  // 1: not used when run-time
};
using CubeSpec = ConvSpec<3, 3, 3, kAxisD, 8>;
using WBandSpec = ConvSpec<1, 1, 11, kAxisW, 4>;
using HBandSpec = ConvSpec<1, 11, 1, kAxisH, 4>;
using DBandSpec = ConvSpec<11, 1, 1, kAxisD, 8>;
constexpr int kGenericR = 4;
using GenericSpec = ConvSpec<0, 0, 0, kAxisD, kGenericR>;

// The weights and biases as the kernels read them: in x's dtype (the op's contract), contiguous, converted
// to the accumulation type on load. No packed copy: the common case (weights already in x's
// dtype) costs no extra launch.
template <typename T>
struct IdcWeights {
  const T* w[kNumConvGroups];  // (gc, kvol)
  const T* b[kNumConvGroups];  // (gc), nullptr: no bias
};

// Where the reduction writes the weight and bias gradients, in the accumulation type.
template <typename Acc>
struct IdcGradOut {
  Acc* w[kNumConvGroups];  // (gc, kvol)
  Acc* b[kNumConvGroups];  // (gc)
};

constexpr std::array<std::array<int64_t, 3>, kNumConvGroups> kStripKernels = {
    {{3, 3, 3}, {1, 1, 11}, {1, 11, 1}, {11, 1, 1}}};

bool uses_strip_kernels(const IdcConfig& cfg) { return cfg.kernel == kStripKernels; }

// ------------------------------------------------------------------ device helpers
// Where a block's tile lies: sample n, group channel j, tile index and origin.
struct TileOrigin {
  int64_t n, j, tile, chan_offset;  // chan_offset: element offset of (n, channel) in NCDHW
  int d0, h0, w0;
};

__device__ __forceinline__ TileOrigin decode_tile(const IdcLaunch& L, int g, int64_t block) {
  const GroupTile& G = L.g[g];
  TileOrigin o;
  const int64_t local = block - G.block_begin;
  o.tile = local % G.tiles;
  const int64_t nc = local / G.tiles;
  o.j = nc % L.gc;
  o.n = nc / L.gc;
  const int64_t tw_i = o.tile % G.nt_w;
  const int64_t rest = o.tile / G.nt_w;
  const int64_t th_i = rest % G.nt_h;
  const int64_t td_i = rest / G.nt_h;
  o.d0 = static_cast<int>(td_i * G.td);
  o.h0 = static_cast<int>(th_i * G.th);
  o.w0 = static_cast<int>(tw_i * G.tw);
  const int64_t c = L.identity + g * L.gc + o.j;
  o.chan_offset = (o.n * L.C + c) * L.DHW;
  return o;
}

// Staging of a halo tile: sm[dd][hh][lead + ww] = src[d0+dd][h0+hh][w0+ww] for dd < nd,
// hh < nh, ww < nw (0 outside the volume), as Acc, rows `pitch` elements apart. Returns `lead`.
//
// Element-wise (any layout): rows go to warps, lanes run along W (coalesced); each warp takes
// kRowsInFlight rows at once so every thread has that many independent loads in flight; lead 0.
constexpr int kRowsInFlight = 4;

template <typename T, typename Acc>
__device__ __forceinline__ void load_tile_elementwise(const T* __restrict__ src,
                                                      Acc* __restrict__ sm, int d0, int h0,
                                                      int w0, int nd, int nh, int nw, int pitch,
                                                      int D, int H, int W) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int rows = nd * nh;
  for (int row0 = warp; row0 < rows; row0 += kWarps * kRowsInFlight) {
    int64_t goff[kRowsInFlight];  // offset of the row in src, -1: outside the volume
#pragma unroll
    for (int u = 0; u < kRowsInFlight; ++u) {
      const int row = row0 + u * kWarps;
      const int dd = row / nh, hh = row - dd * nh;
      const int gd = d0 + dd, gh = h0 + hh;
      goff[u] = (row < rows && gd >= 0 && gd < D && gh >= 0 && gh < H)
                    ? (static_cast<int64_t>(gd) * H + gh) * W
                    : int64_t(-1);
    }
    for (int w = lane; w < nw; w += 32) {
      const int gw = w0 + w;
      const bool w_in = gw >= 0 && gw < W;
      Acc v[kRowsInFlight];
#pragma unroll
      for (int u = 0; u < kRowsInFlight; ++u)
        v[u] = (w_in && goff[u] >= 0) ? static_cast<Acc>(src[goff[u] + gw]) : Acc(0);
#pragma unroll
      for (int u = 0; u < kRowsInFlight; ++u) {
        const int row = row0 + u * kWarps;
        if (row < rows) sm[row * pitch + w] = v[u];
      }
    }
  }
}

// Converts one 16-byte vector of T to Acc and stores it at dst (aligned to the vector's size
// in Acc) with 16-byte shared-memory stores.
template <typename T, typename Acc>
__device__ __forceinline__ void store_vector_as_acc(const uint4& bits, Acc* __restrict__ dst) {
  constexpr int V = 16 / sizeof(T);
  T vals[V];
  memcpy(vals, &bits, 16);
  if constexpr (sizeof(Acc) == 4) {
    float4* d4 = reinterpret_cast<float4*>(dst);
#pragma unroll
    for (int k = 0; k < V / 4; ++k)
      d4[k] = float4{static_cast<float>(vals[4 * k]), static_cast<float>(vals[4 * k + 1]),
                     static_cast<float>(vals[4 * k + 2]), static_cast<float>(vals[4 * k + 3])};
  } else {
    static_assert(V == 2 && sizeof(Acc) == 8, "16-byte vectors of double");
    *reinterpret_cast<double2*>(dst) =
        double2{static_cast<double>(vals[0]), static_cast<double>(vals[1])};
  }
}

// 16-byte vectors (IdcLaunch::vec_halo): the block's threads take the (row, vector) pairs of the
// tile in turn, kVectorsInFlight each at once (all loads issued before the first store: 16 KB
// in flight per block), so a tile of up to kThreads * kVectorsInFlight vectors arrives in one
// round trip. A vector starting before the volume or past it is zeros. NS tiles of the same
// geometry (the backward's dy and x) are staged together: their loads share the round trip.
constexpr int kVectorsInFlight = 4;

template <int NS, typename T, typename Acc>
__device__ __forceinline__ int load_tiles_vectors(const T* __restrict__ src0,
                                                  const T* __restrict__ src1,
                                                  Acc* __restrict__ sm0, Acc* __restrict__ sm1,
                                                  int d0, int h0, int w0, int nd, int nh, int nw,
                                                  int pitch, int D, int H, int W) {
  static_assert(NS == 1 || NS == 2, "one or two tiles");
  constexpr int V = 16 / sizeof(T);
  const int lead = vector_lead(w0, V);
  const int a0 = w0 - lead;                   // a multiple of V, like W
  const int nv = (lead + nw + V - 1) / V;     // vectors per row, nv * V <= pitch
  const int items = nd * nh * nv;
  for (int i0 = threadIdx.x; i0 < items; i0 += kThreads * kVectorsInFlight) {
    uint4 buf[kVectorsInFlight][NS];
#pragma unroll
    for (int u = 0; u < kVectorsInFlight; ++u) {
      const int i = i0 + u * kThreads;
      const int row = i / nv, v = i - row * nv;
      const int dd = row / nh, hh = row - dd * nh;
      const int gd = d0 + dd, gh = h0 + hh, gw = a0 + v * V;
      const bool inside = i < items && gd >= 0 && gd < D && gh >= 0 && gh < H && gw >= 0 && gw < W;
      const int64_t off = (static_cast<int64_t>(gd) * H + gh) * W + gw;
#pragma unroll
      for (int k = 0; k < NS; ++k) {
        buf[u][k] = uint4{0u, 0u, 0u, 0u};
        if (inside) buf[u][k] = __ldg(reinterpret_cast<const uint4*>((k == 0 ? src0 : src1) + off));
      }
    }
#pragma unroll
    for (int u = 0; u < kVectorsInFlight; ++u) {
      const int i = i0 + u * kThreads;
      const int row = i / nv, v = i - row * nv;
      if (i < items) {
#pragma unroll
        for (int k = 0; k < NS; ++k)
          store_vector_as_acc<T, Acc>(buf[u][k], (k == 0 ? sm0 : sm1) + row * pitch + v * V);
      }
    }
  }
  return lead;
}

template <typename T, typename Acc>
__device__ __forceinline__ int load_tile(const T* __restrict__ src, Acc* __restrict__ sm, int d0,
                                         int h0, int w0, int nd, int nh, int nw, int pitch,
                                         bool vectors, int D, int H, int W) {
  if (vectors)
    return load_tiles_vectors<1, T, Acc>(src, nullptr, sm, nullptr, d0, h0, w0, nd, nh, nw, pitch, D,
                                         H, W);
  load_tile_elementwise(src, sm, d0, h0, w0, nd, nh, nw, pitch, D, H, W);
  return 0;
}

// The backward's dy and x tiles (same geometry): together when staged in vectors.
template <typename T, typename Acc>
__device__ __forceinline__ int load_two_tiles(const T* __restrict__ src0,
                                              const T* __restrict__ src1, Acc* __restrict__ sm0,
                                              Acc* __restrict__ sm1, int d0, int h0, int w0,
                                              int nd, int nh, int nw, int pitch, bool vectors,
                                              int D, int H, int W) {
  if (vectors)
    return load_tiles_vectors<2>(src0, src1, sm0, sm1, d0, h0, w0, nd, nh, nw, pitch, D, H, W);
  load_tile_elementwise(src0, sm0, d0, h0, w0, nd, nh, nw, pitch, D, H, W);
  load_tile_elementwise(src1, sm1, d0, h0, w0, nd, nh, nw, pitch, D, H, W);
  return 0;
}

// Copies this block's chunk of identity channels (contiguous per sample n).
template <typename T>
__device__ __forceinline__ void identity_copy(const T* __restrict__ src, T* __restrict__ dst,
                                              const IdcLaunch& L, int64_t block) {
  const int64_t n = block / L.id_blocks_per_n;
  const int64_t k = block - n * L.id_blocks_per_n;
  const int64_t len = L.identity * L.DHW;
  const int64_t begin = k * L.id_chunk;
  const int64_t end = begin + L.id_chunk < len ? begin + L.id_chunk : len;
  const T* s = src + n * L.C * L.DHW;
  T* d = dst + n * L.C * L.DHW;
  if (L.id_vectorized) {
    constexpr int V = 16 / sizeof(T);
    constexpr int kUnroll = 4;  // id_chunk = kUnroll * kThreads * V
    const int64_t vbegin = begin / V, vend = end / V;
    const uint4* sv = reinterpret_cast<const uint4*>(s);
    uint4* dv = reinterpret_cast<uint4*>(d);
    uint4 buf[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {  // all loads in flight before the stores
      const int64_t i = vbegin + u * kThreads + threadIdx.x;
      if (i < vend) buf[u] = __ldg(sv + i);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = vbegin + u * kThreads + threadIdx.x;
      if (i < vend) dv[i] = buf[u];
    }
    for (int64_t i = vend * V + threadIdx.x; i < end; i += kThreads) d[i] = s[i];
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) d[i] = s[i];
  }
}

// Flat tap index (i*KH + j)*KW + t of the tap (ia along the blocking axis, ib, ic along the
// other two axes in D, H, W order).
template <class S>
__device__ __forceinline__ constexpr int static_tap(int ia, int ib, int ic) {
  const int i = S::AX == kAxisD ? ia : ib;
  const int j = S::AX == kAxisD ? ib : (S::AX == kAxisH ? ia : ic);
  const int t = S::AX == kAxisW ? ia : ic;
  return (i * S::KH + j) * S::KW + t;
}

// Strides (in shared memory) of the blocking axis and the two other axes.
template <class S>
struct AxisStrides {
  int a, b, c;
  __device__ __forceinline__ AxisStrides(int sD, int sH) {
    a = S::AX == kAxisD ? sD : (S::AX == kAxisH ? sH : 1);
    b = S::AX == kAxisD ? sH : sD;
    c = S::AX == kAxisW ? sH : 1;
  }
};

// Thread -> first output of its R outputs, in tile coordinates.
template <class S>
__device__ __forceinline__ void thread_origin(const GroupTile& G, int t, int& od, int& oh,
                                              int& ow) {
  const int tx = t % G.bw, ty = (t / G.bw) % G.bh, tz = t / (G.bw * G.bh);
  od = tz * (S::AX == kAxisD ? S::R : 1);
  oh = ty * (S::AX == kAxisH ? S::R : 1);
  ow = tx * (S::AX == kAxisW ? S::R : 1);
}

// Writes the R outputs of a thread that lie inside the volume.
template <typename T, typename Acc, class S>
__device__ __forceinline__ void store_outputs(T* __restrict__ out, const IdcLaunch& L,
                                              const TileOrigin& o, int od, int oh, int ow,
                                              const Acc (&acc)[S::R]) {
#pragma unroll
  for (int r = 0; r < S::R; ++r) {
    const int gd = o.d0 + od + (S::AX == kAxisD ? r : 0);
    const int gh = o.h0 + oh + (S::AX == kAxisH ? r : 0);
    const int gw = o.w0 + ow + (S::AX == kAxisW ? r : 0);
    if (gd < L.D && gh < L.H && gw < L.W)
      out[o.chan_offset + (static_cast<int64_t>(gd) * L.H + gh) * L.W + gw] =
          static_cast<T>(acc[r]);
  }
}

// ------------------------------------------------------------------ forward / dx tile
// out = bias + conv(in, w) (w flipped when L.flip) on one tile of one (n, channel).
template <typename T, typename Acc, class S>
__device__ __forceinline__ void conv_tile(const T* __restrict__ in, T* __restrict__ out,
                                          const IdcWeights<T>& Wt, const IdcLaunch& L, int g,
                                          Acc* __restrict__ sm) {
  const GroupTile& G = L.g[g];
  const TileOrigin o = decode_tile(L, g, blockIdx.x);
  const int kd = S::kStatic ? S::KD : G.kd;
  const int kh = S::kStatic ? S::KH : G.kh;
  const int kw = S::kStatic ? S::KW : G.kw;
  const int kvol = kd * kh * kw;
  const int lead = load_tile(in + o.chan_offset, sm, o.d0 - kd / 2, o.h0 - kh / 2, o.w0 - kw / 2,
                             G.hd, G.hh, G.hw, G.pitch, L.vec_halo, L.D, L.H, L.W);
  const T* __restrict__ wk = Wt.w[g] + o.j * kvol;
  const Acc bias = Wt.b[g] != nullptr ? static_cast<Acc>(Wt.b[g][o.j]) : Acc(0);
  __syncthreads();
  const int t = threadIdx.x;
  if (t >= G.active) return;  // no barrier follows
  int od, oh, ow;
  thread_origin<S>(G, t, od, oh, ow);
  const int sH = G.pitch, sD = G.hh * G.pitch;
  const Acc* __restrict__ base = sm + od * sD + oh * sH + ow + lead;
  Acc acc[S::R];
#pragma unroll
  for (int r = 0; r < S::R; ++r) acc[r] = bias;

  if constexpr (S::kStatic) {
    constexpr int KA = S::AX == kAxisD ? S::KD : (S::AX == kAxisH ? S::KH : S::KW);
    constexpr int KB = S::AX == kAxisD ? S::KH : S::KD;
    constexpr int KC = S::AX == kAxisW ? S::KH : S::KW;
    Acc wr[S::KVOL];
#pragma unroll
    for (int q = 0; q < S::KVOL; ++q) wr[q] = static_cast<Acc>(wk[L.flip ? S::KVOL - 1 - q : q]);
    const AxisStrides<S> st(sD, sH);
#pragma unroll
    for (int ib = 0; ib < KB; ++ib) {
#pragma unroll
      for (int ic = 0; ic < KC; ++ic) {
        Acc col[S::R + KA - 1];
#pragma unroll
        for (int q = 0; q < S::R + KA - 1; ++q) col[q] = base[ib * st.b + ic * st.c + q * st.a];
#pragma unroll
        for (int ia = 0; ia < KA; ++ia) {
          const Acc wv = wr[static_tap<S>(ia, ib, ic)];
#pragma unroll
          for (int r = 0; r < S::R; ++r) acc[r] += wv * col[r + ia];
        }
      }
    }
  } else {
    static_assert(S::AX == kAxisD, "the generic path blocks along D");
    int tap = 0;
    for (int i = 0; i < kd; ++i)
      for (int j = 0; j < kh; ++j)
        for (int tt = 0; tt < kw; ++tt, ++tap) {
          const Acc wv = static_cast<Acc>(wk[L.flip ? kvol - 1 - tap : tap]);
          const Acc* p = base + i * sD + j * sH + tt;
#pragma unroll
          for (int r = 0; r < S::R; ++r) acc[r] += wv * p[r * sD];
        }
  }
  store_outputs<T, Acc, S>(out, L, o, od, oh, ow, acc);
}

// Block-wide sums of v[0..NQ) written to dst[0..NQ): shuffles within warps, then warps in
// a fixed order. Every thread of the block must call it.
template <typename Acc, int NQ>
__device__ __forceinline__ void block_sum_store(const Acc (&v)[NQ], Acc* __restrict__ dst) {
  static_assert(NQ <= kThreads, "one thread per sum in the final step");
  __shared__ Acc red[kWarps][NQ];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int q = 0; q < NQ; ++q) {
    const Acc s = warp_sum(v[q]);
    if (lane == 0) red[warp][q] = s;
  }
  __syncthreads();
  if (threadIdx.x < NQ) {
    Acc s = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += red[w][threadIdx.x];
    dst[threadIdx.x] = s;
  }
}

// ------------------------------------------------------------------ fused backward tile
// dx = conv(dy, flip(w)) on the tile, and this tile's partial sums of
// dW[tap] = sum_o dy[o] * x[o + tap - k//2] and db = sum_o dy[o]. Static shapes only.
template <typename T, typename Acc, class S>
__device__ __forceinline__ void backward_tile(const T* __restrict__ dy, const T* __restrict__ x,
                                              T* __restrict__ dx, const IdcWeights<T>& Wt,
                                              Acc* __restrict__ partials, const IdcLaunch& L,
                                              int g, Acc* __restrict__ sm) {
  static_assert(S::kStatic, "the fused backward needs compile-time kernel sizes");
  constexpr int NQ = S::KVOL + 1;
  constexpr int KA = S::AX == kAxisD ? S::KD : (S::AX == kAxisH ? S::KH : S::KW);
  constexpr int KB = S::AX == kAxisD ? S::KH : S::KD;
  constexpr int KC = S::AX == kAxisW ? S::KH : S::KW;
  const GroupTile& G = L.g[g];
  const TileOrigin o = decode_tile(L, g, blockIdx.x);
  Acc* __restrict__ sdy = sm;
  Acc* __restrict__ sx = sm + G.halo_elems();
  const int pd = S::KD / 2, ph = S::KH / 2, pw = S::KW / 2;
  const int lead = load_two_tiles(dy + o.chan_offset, x + o.chan_offset, sdy, sx, o.d0 - pd,
                                  o.h0 - ph, o.w0 - pw, G.hd, G.hh, G.hw, G.pitch, L.vec_halo,
                                  L.D, L.H, L.W);
  const T* __restrict__ wk = Wt.w[g] + o.j * S::KVOL;
  Acc wr[S::KVOL];  // flipped
#pragma unroll
  for (int q = 0; q < S::KVOL; ++q) wr[q] = static_cast<Acc>(wk[S::KVOL - 1 - q]);
  __syncthreads();

  Acc gsum[NQ];
#pragma unroll
  for (int q = 0; q < NQ; ++q) gsum[q] = 0;
  const int t = threadIdx.x;
  if (t < G.active) {
    int od, oh, ow;
    thread_origin<S>(G, t, od, oh, ow);
    const int sH = G.pitch, sD = G.hh * G.pitch;
    const AxisStrides<S> st(sD, sH);
    const int off = od * sD + oh * sH + ow + lead;
    // dy at this thread's own outputs: the centre of the halo tile (0 outside the volume, so
    // out-of-range outputs add nothing to the weight gradients).
    Acc dyo[S::R];
#pragma unroll
    for (int r = 0; r < S::R; ++r) dyo[r] = sdy[off + pd * sD + ph * sH + pw + r * st.a];
    Acc acc[S::R];
#pragma unroll
    for (int r = 0; r < S::R; ++r) acc[r] = 0;
#pragma unroll
    for (int ib = 0; ib < KB; ++ib) {
#pragma unroll
      for (int ic = 0; ic < KC; ++ic) {
        const int cofs = off + ib * st.b + ic * st.c;
        Acc dcol[S::R + KA - 1], xcol[S::R + KA - 1];
#pragma unroll
        for (int q = 0; q < S::R + KA - 1; ++q) {
          dcol[q] = sdy[cofs + q * st.a];
          xcol[q] = sx[cofs + q * st.a];
        }
#pragma unroll
        for (int ia = 0; ia < KA; ++ia) {
          const int tap = static_tap<S>(ia, ib, ic);
          const Acc wv = wr[tap];
          Acc s = 0;
#pragma unroll
          for (int r = 0; r < S::R; ++r) {
            acc[r] += wv * dcol[r + ia];
            s += dyo[r] * xcol[r + ia];
          }
          gsum[tap] += s;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < S::R; ++r) gsum[S::KVOL] += dyo[r];
    store_outputs<T, Acc, S>(dx, L, o, od, oh, ow, acc);
  }
  const int64_t slot = o.n * G.tiles + o.tile;
  block_sum_store<Acc, NQ>(gsum, partials + G.part_off + (o.j * L.N * G.tiles + slot) * NQ);
}

// ------------------------------------------------------------------ kernels
// Forward (flip = false, in = x, biases) and dx of the generic path (flip = true, in = dy).
// Four blocks per SM (64 registers): what the strips need; without it ptxas gave the generic
// path's fp16/bf16 instances 48 registers and 124-156 bytes of spills.
template <typename T, typename Acc, class S0, class S1, class S2, class S3>
__global__ void __launch_bounds__(kThreads, 4)
    idc_conv_kernel(const T* __restrict__ in, T* __restrict__ out,
                    const __grid_constant__ IdcWeights<T> Wt, const __grid_constant__ IdcLaunch L) {
  FUSIONSEG_DYNAMIC_SMEM(smem_raw);
  Acc* sm = reinterpret_cast<Acc*>(smem_raw);
  const int64_t b = blockIdx.x;
  if (b < L.id_blocks) {
    identity_copy<T>(in, out, L, b);
  } else if (b < L.g[0].block_end) {
    conv_tile<T, Acc, S0>(in, out, Wt, L, 0, sm);
  } else if (b < L.g[1].block_end) {
    conv_tile<T, Acc, S1>(in, out, Wt, L, 1, sm);
  } else if (b < L.g[2].block_end) {
    conv_tile<T, Acc, S2>(in, out, Wt, L, 2, sm);
  } else {
    conv_tile<T, Acc, S3>(in, out, Wt, L, 3, sm);
  }
}

// Fused backward for the released kernel sizes: dx (identity copy of dy, flipped convs) and
// the weight/bias-gradient partials, in one pass over dy and x.
// Two blocks per SM (up to 128 registers): the cube keeps 27 weights, 28 gradient sums and its
// dy/x columns live at once; with ptxas's own register target (64-80) it spilled 48-56 bytes.
template <typename T, typename Acc, class S0, class S1, class S2, class S3>
__global__ void __launch_bounds__(kThreads, 2)
    idc_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                        const __grid_constant__ IdcWeights<T> Wt, Acc* __restrict__ partials,
                        const __grid_constant__ IdcLaunch L) {
  FUSIONSEG_DYNAMIC_SMEM(smem_raw);
  Acc* sm = reinterpret_cast<Acc*>(smem_raw);
  const int64_t b = blockIdx.x;
  if (b < L.id_blocks) {
    identity_copy<T>(dy, dx, L, b);
  } else if (b < L.g[0].block_end) {
    backward_tile<T, Acc, S0>(dy, x, dx, Wt, partials, L, 0, sm);
  } else if (b < L.g[1].block_end) {
    backward_tile<T, Acc, S1>(dy, x, dx, Wt, partials, L, 1, sm);
  } else if (b < L.g[2].block_end) {
    backward_tile<T, Acc, S2>(dy, x, dx, Wt, partials, L, 2, sm);
  } else {
    backward_tile<T, Acc, S3>(dy, x, dx, Wt, partials, L, 3, sm);
  }
}

// Generic path: per-tile partial sums of the weight and bias gradients (run-time kernel
// sizes). Shared memory: x halo tile, dy tile, then (kvol + 1) x kWarps warp sums.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    idc_weight_grad_generic_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                   Acc* __restrict__ partials, const __grid_constant__ IdcLaunch L) {
  using S = GenericSpec;
  FUSIONSEG_DYNAMIC_SMEM(smem_raw);
  Acc* sm = reinterpret_cast<Acc*>(smem_raw);
  const int64_t b = blockIdx.x;  // this launch has no identity blocks
  const int g = b < L.g[0].block_end ? 0 : b < L.g[1].block_end ? 1 : b < L.g[2].block_end ? 2 : 3;
  const GroupTile& G = L.g[g];
  const TileOrigin o = decode_tile(L, g, b);
  const int kd = G.kd, kh = G.kh, kw = G.kw, kvol = G.kvol;
  Acc* __restrict__ sx = sm;
  Acc* __restrict__ sdy = sm + G.halo_elems();
  Acc* __restrict__ red = sdy + G.tile_elems();
  const int lead = load_tile(x + o.chan_offset, sx, o.d0 - kd / 2, o.h0 - kh / 2, o.w0 - kw / 2,
                             G.hd, G.hh, G.hw, G.pitch, L.vec_halo, L.D, L.H, L.W);
  load_tile_elementwise(dy + o.chan_offset, sdy, o.d0, o.h0, o.w0, G.td, G.th, G.tw, G.tw, L.D,
                        L.H, L.W);
  __syncthreads();
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const bool active = t < G.active;
  int od = 0, oh = 0, ow = 0;
  if (active) thread_origin<S>(G, t, od, oh, ow);
  const int sH = G.pitch, sD = G.hh * G.pitch;
  Acc dyo[S::R];
  Acc bsum = 0;
#pragma unroll
  for (int r = 0; r < S::R; ++r) {
    dyo[r] = active ? sdy[((od + r) * G.th + oh) * G.tw + ow] : Acc(0);
    bsum += dyo[r];
  }
  const Acc* __restrict__ base = sx + od * sD + oh * sH + ow + lead;
  int tap = 0;
  for (int i = 0; i < kd; ++i)
    for (int j = 0; j < kh; ++j)
      for (int tt = 0; tt < kw; ++tt, ++tap) {
        Acc s = 0;
        if (active) {
          const Acc* p = base + i * sD + j * sH + tt;
#pragma unroll
          for (int r = 0; r < S::R; ++r) s += dyo[r] * p[r * sD];
        }
        s = warp_sum(s);
        if (lane == 0) red[tap * kWarps + warp] = s;
      }
  bsum = warp_sum(bsum);
  if (lane == 0) red[kvol * kWarps + warp] = bsum;
  __syncthreads();
  const int nq = kvol + 1;
  Acc* __restrict__ dst =
      partials + G.part_off + (o.j * L.N * G.tiles + o.n * G.tiles + o.tile) * nq;
  for (int q = t; q < nq; q += kThreads) {
    Acc s = 0;
    for (int w = 0; w < kWarps; ++w) s += red[q * kWarps + w];
    dst[q] = s;
  }
}

// Second stage: for each convolution channel (one block), sums its per-tile partials over
// all samples and tiles in a fixed order (in double), one warp per gradient entry.
// Second stage of the weight gradients: block (cc, q) sums tap q (q == kvol: the bias) of
// conv channel cc over every sample and tile, in double, in a fixed order (threads stride the
// partials, then warp shuffles, then the warps in order): deterministic. One block per
// (channel, tap) spreads the stage over the GPU (4 * gc * max_nq blocks; blocks past a
// group's kvol + 1 exit at once).
template <typename Acc>
__global__ void __launch_bounds__(kThreads)
    idc_weight_grad_reduce_kernel(const Acc* __restrict__ partials,
                                  const __grid_constant__ IdcGradOut<Acc> out,
                                  const __grid_constant__ IdcLaunch L, int max_nq) {
  const int64_t cc = blockIdx.x / max_nq;
  const int q = static_cast<int>(blockIdx.x - cc * max_nq);
  const int g = static_cast<int>(cc / L.gc);
  const int64_t j = cc - g * L.gc;
  const GroupTile& G = L.g[g];
  const int nq = G.kvol + 1;
  if (q >= nq) return;  // the whole block: q is uniform
  const int64_t slots = L.N * G.tiles;
  const Acc* __restrict__ p = partials + G.part_off + j * slots * nq;
  double s = 0;
  for (int64_t k = threadIdx.x; k < slots; k += kThreads) s += static_cast<double>(p[k * nq + q]);
  __shared__ double red[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  s = warp_sum(s);
  if (lane == 0) red[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) t += red[w];
    if (q < G.kvol)
      out.w[g][j * G.kvol + q] = static_cast<Acc>(t);
    else
      out.b[g][j] = static_cast<Acc>(t);
  }
}

// ------------------------------------------------------------------ host side
enum class Mode { kConv, kBackwardFused, kWeightGradGeneric };

struct GroupShape {
  int axis, r;
};

// Blocking axis and outputs per thread of each group, as the kernels instantiated for the
// strips or the generic spec expect.
std::array<GroupShape, kNumConvGroups> group_shapes(bool strips) {
  if (strips)
    return {{{CubeSpec::AX, CubeSpec::R},
             {WBandSpec::AX, WBandSpec::R},
             {HBandSpec::AX, HBandSpec::R},
             {DBandSpec::AX, DBandSpec::R}}};
  return {{{kAxisD, kGenericR}, {kAxisD, kGenericR}, {kAxisD, kGenericR}, {kAxisD, kGenericR}}};
}

size_t group_smem_bytes(const GroupTile& t, Mode mode, size_t acc_size) {
  switch (mode) {
    case Mode::kConv: return t.halo_elems() * acc_size;
    case Mode::kBackwardFused: return 2 * t.halo_elems() * acc_size;
    case Mode::kWeightGradGeneric:
      return (t.halo_elems() + t.tile_elems() + int64_t(t.kvol + 1) * kWarps) * acc_size;
  }
  return 0;
}

// Largest dynamic shared memory a block may use on the current device (static shared
// memory of the reductions is kept out of it).
// (Queried through the runtime, not ATen's CUDAContext.h, which needs the cuBLAS/cuSPARSE
// headers that a minimal toolkit lacks.)
size_t smem_limit() {
#ifdef FUSIONSEG_CUDA_EMULATION
  const size_t optin = ::fusionseg_emulation::smem_optin();
#else
  int device = 0, optin_int = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin_int, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const size_t optin = static_cast<size_t>(optin_int);
#endif
  constexpr size_t kStaticReserve = 8 * 1024;
  return optin > kStaticReserve ? optin - kStaticReserve : optin;
}

// Builds the launch: tiles per group (largest that fits), block ranges, offsets.
IdcLaunch plan_launch(const IdcConfig& cfg, int64_t N, int D, int H, int W, Mode mode,
                      bool strips, size_t elem_size, size_t acc_size, bool aligned16,
                      size_t* smem_bytes) {
  IdcLaunch L;
  L.N = N;
  L.C = cfg.channels;
  L.identity = cfg.identity;
  L.gc = cfg.gc;
  L.D = D;
  L.H = H;
  L.W = W;
  L.DHW = int64_t(D) * H * W;
  const auto shapes = group_shapes(strips);
  const int64_t V = 16 / static_cast<int64_t>(elem_size);
  const size_t limit = smem_limit();
  size_t smem = 0;
  bool fits = false;
  for (int budget = kThreads; budget >= 32 && !fits; budget /= 2) {
    // 16-byte staging also needs every tile to start on a vector: all blocks of a group then
    // have the same lead, which the pitch is sized for
    L.vec_halo = aligned16 && W % V == 0;
    for (int g = 0; g < kNumConvGroups; ++g) {
      const auto& k = cfg.kernel[g];
      L.g[g] = make_group_tile(int(k[0]), int(k[1]), int(k[2]), shapes[g].axis, shapes[g].r, D,
                               H, W, budget);
      if (L.g[g].tw % V != 0) L.vec_halo = false;
    }
    smem = 0;
    for (int g = 0; g < kNumConvGroups; ++g) {
      if (L.vec_halo) L.g[g].pitch = vector_pitch(L.g[g].hw, int(cfg.kernel[g][2] / 2), int(V));
      if (cfg.gc > 0) smem = std::max(smem, group_smem_bytes(L.g[g], mode, acc_size));
    }
    fits = smem <= limit;
  }
  TORCH_CHECK(fits, "inception_dwconv3d (cuda): the kernel sizes ",
              c10::IntArrayRef(cfg.kernel[0].data(), 3), ", ",
              c10::IntArrayRef(cfg.kernel[1].data(), 3), ", ",
              c10::IntArrayRef(cfg.kernel[2].data(), 3), ", ",
              c10::IntArrayRef(cfg.kernel[3].data(), 3), " need ", smem,
              " bytes of shared memory per block, more than this GPU offers (", limit,
              "); use backend=\"triton\" or \"reference\" for such kernels");
  *smem_bytes = smem;

  L.id_chunk = 4 * kThreads * V;
  L.id_vectorized = aligned16 && (L.C * L.DHW * static_cast<int64_t>(elem_size)) % 16 == 0;
  if (mode != Mode::kWeightGradGeneric && cfg.identity > 0) {
    L.id_blocks_per_n = (cfg.identity * L.DHW + L.id_chunk - 1) / L.id_chunk;
    L.id_blocks = N * L.id_blocks_per_n;
  }
  int64_t next = L.id_blocks, part = 0;
  for (int g = 0; g < kNumConvGroups; ++g) {
    GroupTile& t = L.g[g];
    t.block_begin = next;
    t.block_end = next + N * cfg.gc * t.tiles;
    next = t.block_end;
    t.part_off = part;
    part += cfg.gc * N * t.tiles * (t.kvol + 1);
  }
  L.total_blocks = next;
  TORCH_CHECK(L.total_blocks <= std::numeric_limits<int32_t>::max(),
              "inception_dwconv3d (cuda): the input is too large for one launch (",
              L.total_blocks, " blocks)");
  return L;
}

int64_t partials_size(const IdcLaunch& L) {
  const GroupTile& t = L.g[kNumConvGroups - 1];
  return t.part_off + L.gc * L.N * t.tiles * (t.kvol + 1);
}

// The weights and the given biases in x's dtype, contiguous (no copy when they already are);
// the returned tensors must outlive the launches that read `ptrs`.
template <typename T>
std::array<at::Tensor, 2 * kNumConvGroups> weights_in_dtype(
    const std::array<at::Tensor, 4>& weights, const std::array<std::optional<at::Tensor>, 4>& biases,
    IdcWeights<T>* ptrs) {
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  std::array<at::Tensor, 2 * kNumConvGroups> keep;
  for (int g = 0; g < kNumConvGroups; ++g) {
    keep[g] = weights[g].to(dtype).contiguous();
    ptrs->w[g] = keep[g].const_data_ptr<T>();
    ptrs->b[g] = nullptr;
    if (biases[g].has_value() && biases[g]->defined()) {
      keep[kNumConvGroups + g] = biases[g]->to(dtype).contiguous();
      ptrs->b[g] = keep[kNumConvGroups + g].const_data_ptr<T>();
    }
  }
  return keep;
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t smem) {
#ifdef FUSIONSEG_CUDA_EMULATION
  ::fusionseg_emulation::check_dynamic_smem(smem);
#else
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
#endif
}

// out = op(in): the forward (flip = false, with biases) or dx on the generic path (flip = true,
// no biases). in, out contiguous NCDHW with numel() > 0.
template <typename T>
void launch_conv(const at::Tensor& in, at::Tensor& out, const IdcConfig& cfg,
                 const std::array<at::Tensor, 4>& weights,
                 const std::array<std::optional<at::Tensor>, 4>& biases, bool flip) {
  using Acc = at::opmath_type<T>;
  const int64_t N = in.size(0);
  const int D = int(in.size(2)), H = int(in.size(3)), W = int(in.size(4));
  const bool strips = uses_strip_kernels(cfg);
  size_t smem = 0;
  IdcLaunch L = plan_launch(cfg, N, D, H, W, Mode::kConv, strips, sizeof(T), sizeof(Acc),
                            is_aligned16({in.const_data_ptr(), out.const_data_ptr()}), &smem);
  L.flip = flip;
  if (L.total_blocks == 0) return;
  IdcWeights<T> wt{};
  const auto keep = weights_in_dtype<T>(weights, biases, &wt);
  const auto stream = current_stream();
  const T* src = in.const_data_ptr<T>();
  T* dst = out.mutable_data_ptr<T>();
  if (strips) {
    auto kernel = idc_conv_kernel<T, Acc, CubeSpec, WBandSpec, HBandSpec, DBandSpec>;
    allow_smem(kernel, smem);
    FUSIONSEG_LAUNCH(kernel, static_cast<unsigned>(L.total_blocks), smem, stream, src, dst, wt, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    auto kernel = idc_conv_kernel<T, Acc, GenericSpec, GenericSpec, GenericSpec, GenericSpec>;
    allow_smem(kernel, smem);
    FUSIONSEG_LAUNCH(kernel, static_cast<unsigned>(L.total_blocks), smem, stream, src, dst, wt, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// dx and the weight/bias gradients, written by the reduction to `out` (Acc, per group (gc, kvol)
// and (gc)). dy, x, dx contiguous NCDHW with numel() > 0 and gc > 0.
template <typename T>
void launch_backward(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx,
                     const IdcConfig& cfg, const std::array<at::Tensor, 4>& weights,
                     const IdcGradOut<at::opmath_type<T>>& out) {
  using Acc = at::opmath_type<T>;
  const auto acc_dtype = c10::CppTypeToScalarType<Acc>::value;
  const int64_t N = x.size(0);
  const int D = int(x.size(2)), H = int(x.size(3)), W = int(x.size(4));
  const bool strips = uses_strip_kernels(cfg);
  const auto stream = current_stream();
  const std::array<std::optional<at::Tensor>, 4> no_bias = {};
  size_t smem = 0;
  IdcLaunch L;
  at::Tensor partials;
  if (strips) {
    L = plan_launch(cfg, N, D, H, W, Mode::kBackwardFused, true, sizeof(T), sizeof(Acc),
                    is_aligned16({dy.const_data_ptr(), x.const_data_ptr(), dx.const_data_ptr()}),
                    &smem);
    L.flip = true;
    IdcWeights<T> wt{};
    const auto keep = weights_in_dtype<T>(weights, no_bias, &wt);
    partials = at::empty({partials_size(L)}, x.options().dtype(acc_dtype));
    auto kernel = idc_backward_kernel<T, Acc, CubeSpec, WBandSpec, HBandSpec, DBandSpec>;
    allow_smem(kernel, smem);
    FUSIONSEG_LAUNCH(kernel, static_cast<unsigned>(L.total_blocks), smem, stream,
                     dy.const_data_ptr<T>(), x.const_data_ptr<T>(), dx.mutable_data_ptr<T>(), wt,
                     partials.mutable_data_ptr<Acc>(), L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    launch_conv<T>(dy, dx, cfg, weights, no_bias, /*flip=*/true);
    L = plan_launch(cfg, N, D, H, W, Mode::kWeightGradGeneric, false, sizeof(T), sizeof(Acc),
                    is_aligned16({x.const_data_ptr()}), &smem);
    partials = at::empty({partials_size(L)}, x.options().dtype(acc_dtype));
    auto kernel = idc_weight_grad_generic_kernel<T, Acc>;
    allow_smem(kernel, smem);
    FUSIONSEG_LAUNCH(kernel, static_cast<unsigned>(L.total_blocks), smem, stream,
                     dy.const_data_ptr<T>(), x.const_data_ptr<T>(),
                     partials.mutable_data_ptr<Acc>(), L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  int max_nq = 1;
  for (int g = 0; g < kNumConvGroups; ++g) max_nq = std::max(max_nq, L.g[g].kvol + 1);
  auto reduce_kernel = idc_weight_grad_reduce_kernel<Acc>;
  FUSIONSEG_LAUNCH(reduce_kernel, static_cast<unsigned>(kNumConvGroups * cfg.gc * max_nq), 0,
                   stream, partials.const_data_ptr<Acc>(), out, L, max_nq);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ------------------------------------------------------------------ op entry points
// poison() and match_layout() (the output laid out like empty_like(x)) are shared with the CPU
// kernels: fusionseg/inception_dwconv3d.h, defined in ops/inception_dwconv3d.cpp.

void check_cuda_input(const at::Tensor& x) {
#ifndef FUSIONSEG_CUDA_EMULATION
  TORCH_CHECK(x.is_cuda(), "the cuda backend of inception_dwconv3d needs CUDA tensors, got a "
              "tensor on ", x.device());
#endif
  for (int a = 2; a < 5; ++a)
    TORCH_CHECK(x.size(a) < (int64_t(1) << 30), "inception_dwconv3d (cuda): spatial size ",
                x.size(a), " along dimension ", a, " is too large");
}

at::Tensor forward_cuda(const at::Tensor& x, const at::Tensor& cube_weight,
                        const std::optional<at::Tensor>& cube_bias, const at::Tensor& w_weight,
                        const std::optional<at::Tensor>& w_bias, const at::Tensor& h_weight,
                        const std::optional<at::Tensor>& h_bias, const at::Tensor& d_weight,
                        const std::optional<at::Tensor>& d_bias) {
  const IdcConfig cfg = check_inception_dwconv3d_args(x, cube_weight, cube_bias, w_weight, w_bias,
                                                      h_weight, h_bias, d_weight, d_bias);
  check_cuda_input(x);
  FUSIONSEG_DEVICE_GUARD(x);
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc, at::MemoryFormat::Contiguous);
  poison(y);
  if (y.numel() > 0) {
    const std::array<at::Tensor, 4> weights = {cube_weight, w_weight, h_weight, d_weight};
    const std::array<std::optional<at::Tensor>, 4> biases = {cube_bias, w_bias, h_bias, d_bias};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                    "inception_dwconv3d_forward_cuda", [&] {
                                      launch_conv<scalar_t>(xc, y, cfg, weights, biases, false);
                                    });
  }
  return match_layout(y, x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
backward_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& cube_weight,
              const at::Tensor& w_weight, const at::Tensor& h_weight,
              const at::Tensor& d_weight) {
  const IdcConfig cfg = check_inception_dwconv3d_args(x, cube_weight, {}, w_weight, {}, h_weight,
                                                      {}, d_weight, {});
  check_cuda_input(x);
  TORCH_CHECK(grad_y.device() == x.device(), "inception_dwconv3d backward: grad_y is on ",
              grad_y.device(), " but the input is on ", x.device());
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "inception_dwconv3d backward: grad_y has shape ",
              grad_y.sizes(), " but the input has shape ", x.sizes());
  FUSIONSEG_DEVICE_GUARD(x);
  const at::Tensor xc = x.contiguous();
  const at::Tensor gyc = grad_y.to(x.scalar_type()).contiguous();
  at::Tensor gx = at::empty_like(xc, at::MemoryFormat::Contiguous);
  poison(gx);
  const std::array<at::Tensor, 4> weights = {cube_weight, w_weight, h_weight, d_weight};
  std::array<at::Tensor, 4> gw, gb;
  const bool has_weight_grads = gx.numel() > 0 && cfg.gc > 0;
  if (!has_weight_grads) {  // N = 0 or no convolution channels: the gradients are zeros
    for (int g = 0; g < kNumConvGroups; ++g) {
      gw[g] = at::zeros(weights[g].sizes(), weights[g].options().memory_format(at::MemoryFormat::Contiguous));
      gb[g] = at::zeros({cfg.gc}, weights[g].options());
    }
  }
  if (gx.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "inception_dwconv3d_backward_cuda", [&] {
          if (cfg.gc == 0) {  // identity op: dx = dy, no weights to differentiate
            launch_conv<scalar_t>(gyc, gx, cfg, weights, {}, /*flip=*/true);
            return;
          }
          using Acc = at::opmath_type<scalar_t>;
          const auto acc_dtype = c10::CppTypeToScalarType<Acc>::value;
          // The reduction writes straight into the returned gradients when the weights are in
          // the accumulation dtype (fp32 weights: the usual case, autocast included); otherwise
          // into Acc buffers converted afterwards.
          std::array<at::Tensor, 4> ow, ob;
          IdcGradOut<Acc> out{};
          for (int g = 0; g < kNumConvGroups; ++g) {
            const auto opts = weights[g].options().dtype(acc_dtype);
            ow[g] = at::empty(weights[g].sizes(), opts.memory_format(at::MemoryFormat::Contiguous));
            ob[g] = at::empty({cfg.gc}, opts);
            out.w[g] = ow[g].mutable_data_ptr<Acc>();
            out.b[g] = ob[g].mutable_data_ptr<Acc>();
          }
          launch_backward<scalar_t>(gyc, xc, gx, cfg, weights, out);
          for (int g = 0; g < kNumConvGroups; ++g) {
            gw[g] = ow[g].to(weights[g].scalar_type());
            gb[g] = ob[g].to(weights[g].scalar_type());
          }
        });
  }
  at::Tensor grad_x = match_layout(gx, x);
  return {grad_x, gw[0], gw[1], gw[2], gw[3], gb[0], gb[1], gb[2], gb[3]};
}

}  // namespace
}  // namespace fusionseg

TORCH_LIBRARY_IMPL(fusionseg, FUSIONSEG_KERNELS_DISPATCH_KEY, m) {
  m.impl("inception_dwconv3d_forward", &fusionseg::forward_cuda);
  m.impl("inception_dwconv3d_backward", &fusionseg::backward_cuda);
}
