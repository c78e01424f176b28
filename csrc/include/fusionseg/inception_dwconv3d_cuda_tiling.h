// Tiling of the CUDA kernels of fusionseg::inception_dwconv3d_*: the launch description the
// host builds and the device reads. Plain structs and host/device arithmetic only (no CUDA
// headers), so the host-side choice of tiles is the single source of truth for both sides.
#pragma once

#include <algorithm>
#include <cstdint>

#include "fusionseg/inception_dwconv3d.h"

namespace fusionseg {
namespace cuda_tiling {

// Threads per block of every kernel of the op (8 warps).
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Axis along which a thread keeps R consecutive outputs in registers (register blocking).
enum Axis : int { kAxisD = 0, kAxisH = 1, kAxisW = 2 };

// How one convolution group is tiled. A block computes one output tile of one (n, channel):
// td x th x tw outputs, from a (td+kd-1) x (th+kh-1) x (tw+kw-1) halo tile in shared memory.
// Threads form a bd x bh x bw grid (the first `active` threads of the block); each computes
// R outputs along `axis`.
struct GroupTile {
  int kd = 1, kh = 1, kw = 1, kvol = 1;
  int axis = kAxisD, r = 1;
  int bw = 1, bh = 1, bd = 1, active = 0;
  int td = 1, th = 1, tw = 1;
  int hd = 1, hh = 1, hw = 1;
  int pitch = 1;            // shared-memory row stride of the halo tile (>= hw, see IdcLaunch)
  int nt_d = 0, nt_h = 0, nt_w = 0;
  int64_t tiles = 0;        // tiles per (n, channel)
  int64_t block_begin = 0;  // this group's blocks are [block_begin, block_end) of the grid
  int64_t block_end = 0;
  int64_t part_off = 0;     // offset of its weight-gradient partials (backward)

  FUSIONSEG_HOST_DEVICE int64_t halo_elems() const { return int64_t(hd) * hh * pitch; }
  FUSIONSEG_HOST_DEVICE int64_t tile_elems() const { return int64_t(td) * th * tw; }
};

// One launch of the fused kernels: identity copy blocks first, then the four groups' blocks.
struct IdcLaunch {
  int64_t N = 0, C = 0, identity = 0, gc = 0;
  int D = 0, H = 0, W = 0;
  int64_t DHW = 0;
  int64_t id_chunk = 0;          // identity elements one block copies
  int64_t id_blocks_per_n = 0;
  int64_t id_blocks = 0;         // = N * id_blocks_per_n
  bool id_vectorized = false;    // 16-byte loads/stores are aligned for every segment
  // Halo tiles are staged with 16-byte loads: the tensors are 16-byte aligned and a row of W
  // elements is a whole number of 16-byte vectors, so every vector lies wholly inside or
  // outside the volume. A staged row then starts at the vector holding its first halo element
  // ("lead" elements before it) and the row stride rounds up to whole vectors.
  bool vec_halo = false;
  bool flip = false;             // use the kernels flipped (dx = conv(dy, flipped w))
  GroupTile g[kNumConvGroups];
  int64_t total_blocks = 0;
};

FUSIONSEG_HOST_DEVICE inline int ceil_div_int(int64_t a, int64_t b) {
  return static_cast<int>((a + b - 1) / b);
}

inline int pow2_at_least(int64_t v) {
  int p = 1;
  while (p < v && p < (1 << 20)) p <<= 1;
  return p;
}

// Thread grid and tile of one group for a given thread budget (<= kThreads, power of two).
// W is covered first (coalescing), then H, then D; no axis gets more threads than its extent
// needs, so small volumes don't compute large empty tiles.
inline GroupTile make_group_tile(int kd, int kh, int kw, int axis, int r, int D, int H, int W,
                                 int budget) {
  GroupTile t;
  t.kd = kd;
  t.kh = kh;
  t.kw = kw;
  t.kvol = kd * kh * kw;
  t.axis = axis;
  t.r = r;
  const int ext_w = axis == kAxisW ? ceil_div_int(W, r) : W;
  const int ext_h = axis == kAxisH ? ceil_div_int(H, r) : H;
  const int ext_d = axis == kAxisD ? ceil_div_int(D, r) : D;
  t.bw = std::max(1, std::min({32, budget, pow2_at_least(ext_w)}));
  t.bh = std::max(1, std::min(budget / t.bw, pow2_at_least(ext_h)));
  t.bd = std::max(1, std::min(budget / (t.bw * t.bh), pow2_at_least(ext_d)));
  t.active = t.bw * t.bh * t.bd;
  t.td = t.bd * (axis == kAxisD ? r : 1);
  t.th = t.bh * (axis == kAxisH ? r : 1);
  t.tw = t.bw * (axis == kAxisW ? r : 1);
  t.hd = t.td + kd - 1;
  t.hh = t.th + kh - 1;
  t.hw = t.tw + kw - 1;
  t.pitch = t.hw;
  t.nt_d = ceil_div_int(D, t.td);
  t.nt_h = ceil_div_int(H, t.th);
  t.nt_w = ceil_div_int(W, t.tw);
  t.tiles = int64_t(t.nt_d) * t.nt_h * t.nt_w;
  return t;
}

// Elements before a halo row's first element in its first 16-byte vector of v elements, when
// the tile starts at a multiple of v (tw % v == 0) and the halo reaches pw columns before it.
FUSIONSEG_HOST_DEVICE inline int vector_lead(int w_begin, int v) { return ((w_begin % v) + v) % v; }

// Shared-memory row stride of a halo row staged in vectors of v elements: whole vectors.
inline int vector_pitch(int hw, int pw, int v) { return ceil_div_int(vector_lead(-pw, v) + hw, v) * v; }

}  // namespace cuda_tiling
}  // namespace fusionseg
