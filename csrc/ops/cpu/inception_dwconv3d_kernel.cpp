// Fused CPU kernels for fusionseg::inception_dwconv3d_{forward,backward}.
//
// One task = one output plane (n, c, d) of H x W voxels. Identity channels are a memcpy;
// convolution channels accumulate rows: every tap row of the kernel is a shifted, contiguous
// multiply-add along W that the compiler vectorizes. The hot per-plane functions are compiled
// for AVX-512, AVX2 and baseline x86-64 and picked at load time (GCC target_clones), so the
// shipped library runs on any x86-64 CPU. The backward computes dx (the same convolution
// with flipped kernels, on dy) and the weight/bias gradients (per-plane partial sums in
// double, reduced afterwards in a fixed order: deterministic for any thread count) in the
// same pass over dy.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <array>
#include <cstring>
#include <limits>
#include <vector>

#include "fusionseg/inception_dwconv3d.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define FUSIONSEG_HAVE_STREAM 1
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
#define FUSIONSEG_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "avx2", "default")))
#else
#define FUSIONSEG_MULTIVERSION
#endif
#define FUSIONSEG_INLINE inline __attribute__((always_inline))
// Lambdas in the hot path must be inlined into the multiversioned callers too.
#define FUSIONSEG_INLINE_LAMBDA __attribute__((always_inline))

namespace fusionseg {
namespace {

// Tasks are ordered (n, channel, d) with the channels interleaved across the five groups
// (identity, cube, W, H, D), so every contiguous range of tasks — what at::parallel_for hands a
// thread — holds the same mix of cheap copies and convolutions (balanced threads), while all
// planes of a channel run consecutively on one thread: the D band's 11-plane window and the
// cube's 3 planes come from cache and each input plane is read from memory once.
struct TaskIndex {
  int64_t n, c, d;
};

// Channel order: each group's channels spread evenly over the sequence (a merge by
// (rank + 0.5) / group size).
std::vector<int64_t> interleaved_channels(const IdcConfig& cfg) {
  struct Item {
    double key;
    int64_t c;
  };
  std::vector<Item> items;
  items.reserve(cfg.channels);
  for (int64_t c = 0; c < cfg.identity; ++c) items.push_back({(c + 0.5) / cfg.identity, c});
  for (int64_t c = cfg.identity; c < cfg.channels; ++c) {
    const int64_t rank = (c - cfg.identity) % cfg.gc;
    items.push_back({(rank + 0.5) / cfg.gc, c});
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& x, const Item& y) { return x.key < y.key; });
  std::vector<int64_t> order(cfg.channels);
  for (int64_t i = 0; i < cfg.channels; ++i) order[i] = items[i].c;
  return order;
}

inline TaskIndex task_of(int64_t t, const std::vector<int64_t>& order, int64_t D) {
  const int64_t C = static_cast<int64_t>(order.size());
  TaskIndex r;
  r.n = t / (C * D);
  const int64_t rem = t % (C * D);
  r.c = order[rem / D];
  r.d = rem % D;
  return r;
}

// ---------------------------------------------------------------- row primitives
// 32-byte vectors (GCC vector extensions): AVX2 registers in the haswell and skylake-avx512
// clones, two SSE registers in the baseline clone.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  static constexpr int width = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  static constexpr int width = 4;
};

template <typename T>
FUSIONSEG_INLINE typename Vec<T>::type vload(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
FUSIONSEG_INLINE void vstore(T* p, typename Vec<T>::type v) {
  std::memcpy(p, &v, sizeof(v));
}
// Broadcasts written as initializer lists, which GCC turns into one vbroadcastss/sd.
FUSIONSEG_INLINE Vec<float>::type vsplat(float s) { return Vec<float>::type{s, s, s, s, s, s, s, s}; }
FUSIONSEG_INLINE Vec<double>::type vsplat(double s) { return Vec<double>::type{s, s, s, s}; }
// Non-temporal (streaming) store of one 32-byte-aligned vector: outputs larger than the cache are
// written without first reading their lines (saves a third of a memory-bound pass's traffic).
template <typename T>
FUSIONSEG_INLINE void vstore_nt(T* p, typename Vec<T>::type v) {
#ifdef FUSIONSEG_HAVE_STREAM
  __m128i half[2];
  std::memcpy(half, &v, sizeof(v));
  _mm_stream_si128(reinterpret_cast<__m128i*>(p), half[0]);
  _mm_stream_si128(reinterpret_cast<__m128i*>(p) + 1, half[1]);
#else
  vstore(p, v);
#endif
}

// dst[0, n) = src[0, n); with `stream`, dst is 32-byte aligned and written with streaming stores.
template <typename T>
FUSIONSEG_INLINE void copy_plane(T* __restrict dst, const T* __restrict src, int64_t n, bool stream) {
#ifdef FUSIONSEG_HAVE_STREAM
  if (stream) {
    constexpr int64_t M = 16 / sizeof(T);
    int64_t i = 0;
    for (; i + M <= n; i += M)
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i),
                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    for (; i < n; ++i) dst[i] = src[i];
    return;
  }
#endif
  std::memcpy(dst, src, sizeof(T) * n);
}

FUSIONSEG_INLINE void stream_fence(bool stream) {
#ifdef FUSIONSEG_HAVE_STREAM
  if (stream) _mm_sfence();
#endif
}

template <typename T>
FUSIONSEG_INLINE T vsum(typename Vec<T>::type v) {
  T s = 0;
  for (int i = 0; i < Vec<T>::width; ++i) s += v[i];
  return s;
}

// NV consecutive vectors of output: out[v*N + l] = bias + sum_r sum_t ks[r][t] * rows[r][off + v*N + l + t],
// accumulated in registers over all taps.
template <typename T, int KW, int NV>
FUSIONSEG_INLINE void conv_block(T* __restrict out, const T* const* rows, const T* const* ks, int64_t nr,
                                 int64_t kw_runtime, int64_t off, T bias, bool stream) {
  using VT = typename Vec<T>::type;
  constexpr int N = Vec<T>::width;
  const int64_t kw = KW > 0 ? KW : kw_runtime;
  VT a[NV];
  for (int v = 0; v < NV; ++v) a[v] = vsplat(bias);
  for (int64_t r = 0; r < nr; ++r) {
    const T* p = rows[r] + off;
    const T* k = ks[r];
#pragma GCC unroll 11
    for (int64_t t = 0; t < kw; ++t) {
      const VT c = vsplat(k[t]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) a[v] += c * vload(p + t + v * N);
    }
  }
  if (stream) {
    for (int v = 0; v < NV; ++v) vstore_nt(out + v * N, a[v]);
  } else {
    for (int v = 0; v < NV; ++v) vstore(out + v * N, a[v]);
  }
}

// One output row segment of a depthwise conv:
//   out[w] = bias + sum_r sum_t ks[r][t] * rows[r][w + t - kw/2]   for w in [0, len)
// With PADDED the rows carry kw/2 readable zeros on each side (no bounds checks); otherwise
// columns whose taps leave [0, len) are computed with bounds checks (zero padding). The
// interior keeps four vector accumulators in registers across all nr * kw taps: one load and
// one FMA per tap, one store per output.
template <typename T, int KW, bool PADDED>
FUSIONSEG_INLINE void conv_row(T* __restrict out, const T* const* rows, const T* const* ks, int64_t nr,
                               int64_t len, int64_t kw_runtime, T bias, bool stream = false) {
  using VT = typename Vec<T>::type;
  constexpr int N = Vec<T>::width;
  const int64_t kw = KW > 0 ? KW : kw_runtime;
  const int64_t pw = kw / 2;
  const int64_t lo = PADDED ? 0 : std::min(pw, len);
  const int64_t hi = PADDED ? len : std::max(len - pw, lo);
  if (!PADDED) {
    auto edge = [&](int64_t w) FUSIONSEG_INLINE_LAMBDA {
      T acc = bias;
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t t = 0; t < kw; ++t) {
          const int64_t i = w + t - pw;
          if (i >= 0 && i < len) acc += ks[r][t] * rows[r][i];
        }
      out[w] = acc;
    };
    for (int64_t w = 0; w < lo; ++w) edge(w);
    for (int64_t w = hi; w < len; ++w) edge(w);
  }
  int64_t w = lo;
  for (; w + 4 * N <= hi; w += 4 * N) conv_block<T, KW, 4>(out + w, rows, ks, nr, kw, w - pw, bias, stream);
  if (w + 2 * N <= hi) {
    conv_block<T, KW, 2>(out + w, rows, ks, nr, kw, w - pw, bias, stream);
    w += 2 * N;
  }
  if (w + N <= hi) {
    conv_block<T, KW, 1>(out + w, rows, ks, nr, kw, w - pw, bias, stream);
    w += N;
  }
  for (; w < hi; ++w) {
    T acc = bias;
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t t = 0; t < kw; ++t) acc += ks[r][t] * rows[r][w + t - pw];
    out[w] = acc;
  }
}

// Weight gradient of one output row segment:
//   parts[r][t] += sum_w dy[w] * rows[r][w + t - kw/2]  over w in [0, len)
// (PADDED rows as in conv_row; otherwise only indices inside [0, len) count). All kw tap sums of
// a row are accumulated together, loading dy once per vector.
template <typename T, int KW, bool PADDED>
FUSIONSEG_INLINE void weight_grad_row(const T* __restrict dy, const T* const* rows, double* const* parts,
                                      int64_t nr, int64_t len, int64_t kw_runtime) {
  using VT = typename Vec<T>::type;
  constexpr int N = Vec<T>::width;
  constexpr int KA = KW > 0 ? KW : 1;  // accumulator count when kw is static
  const int64_t kw = KW > 0 ? KW : kw_runtime;
  const int64_t pw = kw / 2;
  const int64_t lo = PADDED ? 0 : std::min(pw, len);
  const int64_t hi = PADDED ? len : std::max(len - pw, lo);
  for (int64_t r = 0; r < nr; ++r) {
    const T* row = rows[r];
    double* part = parts[r];
    if (!PADDED) {
      for (int64_t e = 0; e < 2; ++e) {
        const int64_t b = e == 0 ? 0 : hi, end = e == 0 ? lo : len;
        for (int64_t w = b; w < end; ++w)
          for (int64_t t = 0; t < kw; ++t) {
            const int64_t i = w + t - pw;
            if (i >= 0 && i < len) part[t] += static_cast<double>(dy[w]) * row[i];
          }
      }
    }
    if (KW > 0) {
      VT acc[KA];
      for (int t = 0; t < KA; ++t) acc[t] = vsplat(T(0));
      int64_t w = lo;
      for (; w + N <= hi; w += N) {
        const VT d = vload(dy + w);
        const T* p = row + w - pw;
#pragma GCC unroll 11
        for (int t = 0; t < KA; ++t) acc[t] += d * vload(p + t);
      }
      T tail[KA] = {};
      for (; w < hi; ++w)
        for (int t = 0; t < KA; ++t) tail[t] += dy[w] * row[w + t - pw];
      for (int t = 0; t < KA; ++t) part[t] += static_cast<double>(vsum<T>(acc[t]) + tail[t]);
    } else {
      for (int64_t t = 0; t < kw; ++t) {
        VT acc = vsplat(T(0));
        int64_t w = lo;
        const T* p = row + t - pw;
        for (; w + N <= hi; w += N) acc += vload(dy + w) * vload(p + w);
        T sum = vsum<T>(acc);
        for (; w < hi; ++w) sum += dy[w] * p[w];
        part[t] += static_cast<double>(sum);
      }
    }
  }
}

template <typename T>
FUSIONSEG_INLINE double plane_sum(const T* __restrict p, int64_t n) {
  using VT = typename Vec<T>::type;
  constexpr int N = Vec<T>::width;
  VT acc = vsplat(T(0));
  int64_t i = 0;
  for (; i + N <= n; i += N) acc += vload(p + i);
  double s = vsum<T>(acc);
  for (; i < n; ++i) s += p[i];
  return s;
}

// ---------------------------------------------------------------- plane kernels
struct PlaneGeometry {
  int64_t D, H, W;
  int64_t kd, kh, kw;
};

// Zero-padded copies of input planes ((H + 2ph) x (W + 2pw)) for groups whose kernel has a W
// extent: with them every output row is computed without bounds checks, which matters for the
// network's narrow volumes (W = 8..32). A ring of kd slots, so consecutive output planes of a
// channel pad each input plane once. Tags are reset at the start of every task chunk (the
// source memory may be reused by later tensors).
template <typename T>
struct PaddedPlanes {
  std::vector<T> buf;
  std::vector<const T*> tag;
  int64_t slots = 0, H = 0, W = 0, ph = 0, pw = 0, Wp = 0, stride = 0;

  void configure(const PlaneGeometry& g) {
    const int64_t nph = g.kh / 2, npw = g.kw / 2;
    if (slots != g.kd || H != g.H || W != g.W || ph != nph || pw != npw) {
      slots = g.kd, H = g.H, W = g.W, ph = nph, pw = npw;
      Wp = W + 2 * pw;
      stride = (H + 2 * ph) * Wp + 2 * pw;  // slack: vector tails may read a few zeros past
      buf.assign(static_cast<size_t>(slots * stride), T(0));
      tag.assign(static_cast<size_t>(slots), nullptr);
    }
  }
  void invalidate() { std::fill(tag.begin(), tag.end(), nullptr); }

  // Padded plane di of vol; element (h, w) of the source is at [(h + ph) * Wp + w + pw].
  FUSIONSEG_INLINE const T* get(const T* vol, int64_t di) {
    const T* src = vol + di * H * W;
    const int64_t slot = di % slots;
    T* dst = buf.data() + slot * stride;
    if (tag[slot] != src) {
      // Rows are short (W = 8..128 in the network): an inline loop beats a memcpy call per row.
      for (int64_t h = 0; h < H; ++h) {
        T* __restrict d_row = dst + (h + ph) * Wp + pw;
        const T* __restrict s_row = src + h * W;
        for (int64_t w = 0; w < W; ++w) d_row[w] = s_row[w];
      }
      tag[slot] = src;
    }
    return dst;
  }
};

template <typename T>
struct Workspace {
  std::vector<const T*> rows, ks;
  std::vector<double*> parts;
  PaddedPlanes<T> pad_a, pad_b;  // forward/dx input; weight-gradient x
  bool stream = false;           // write conv outputs with streaming stores (see use_streaming)

  void reserve(int64_t n) {
    if (static_cast<int64_t>(rows.size()) < n) {
      rows.resize(n);
      ks.resize(n);
      parts.resize(n);
    }
  }
  void invalidate() {
    pad_a.invalidate();
    pad_b.invalidate();
  }
};

// kw == 1 (D band, H band, b x b x 1 planes): a plane is one flat array and each (i, j) tap is
// a shift by whole rows/planes, so rows [ph, H - ph) form one long segment with every tap;
// only the ph edge rows at the top and bottom get a reduced tap set.
// fn(out_offset, len, nr) is called with ws.rows/ks/parts filled for the segment.
template <typename T, typename Fn>
FUSIONSEG_INLINE void for_each_flat_segment(const T* vol, const PlaneGeometry& g, int64_t d,
                                            const T* k, double* partial, Workspace<T>& ws, Fn&& fn) {
  const int64_t HW = g.H * g.W, pd = g.kd / 2, ph = g.kh / 2;
  ws.reserve(g.kd * g.kh);
  const int64_t h0 = std::min(ph, g.H), h1 = std::max(g.H - ph, h0);
  auto gather = [&](int64_t hb, int64_t he) FUSIONSEG_INLINE_LAMBDA {  // rows [hb, he): taps valid for all of them
    int64_t nr = 0;
    for (int64_t i = 0; i < g.kd; ++i) {
      const int64_t di = d + i - pd;
      if (di < 0 || di >= g.D) continue;
      for (int64_t j = 0; j < g.kh; ++j) {
        const int64_t s = j - ph;
        if (hb + s < 0 || he - 1 + s >= g.H) continue;
        ws.rows[nr] = vol + di * HW + (hb + s) * g.W;
        if (k) ws.ks[nr] = k + i * g.kh + j;
        if (partial) ws.parts[nr] = partial + i * g.kh + j;
        ++nr;
      }
    }
    fn(hb * g.W, (he - hb) * g.W, nr);
  };
  if (h1 > h0) gather(h0, h1);
  for (int64_t h = 0; h < h0; ++h) gather(h, h + 1);
  for (int64_t h = h1; h < g.H; ++h) gather(h, h + 1);
}

// kw > 1 (cube, W band, 1 x b x b and b x 1 x b planes): rows of zero-padded planes.
// fn(h, nr) is called per output row with ws.rows (pointing at padded column 0 + pw, so that
// conv_row's rows[r][w + t - pw] is the padded element), ks and parts filled.
template <typename T, typename Fn>
FUSIONSEG_INLINE void for_each_padded_row(const T* vol, const PlaneGeometry& g, int64_t d,
                                          const T* k, double* partial, PaddedPlanes<T>& pad,
                                          Workspace<T>& ws, Fn&& fn) {
  const int64_t pd = g.kd / 2;
  pad.configure(g);
  ws.reserve(g.kd * g.kh);
  const T* planes[64];
  std::vector<const T*> many;
  const T** pl = planes;
  if (g.kd > 64) {
    many.resize(g.kd);
    pl = many.data();
  }
  int64_t first = -1;
  int64_t ni = 0;
  for (int64_t i = 0; i < g.kd; ++i) {
    const int64_t di = d + i - pd;
    if (di < 0 || di >= g.D) continue;
    if (first < 0) first = i;
    pl[ni++] = pad.get(vol, di);
  }
  for (int64_t h = 0; h < g.H; ++h) {
    int64_t nr = 0;
    for (int64_t ii = 0; ii < ni; ++ii) {
      const int64_t i = first + ii;
      for (int64_t j = 0; j < g.kh; ++j) {
        // padded row h + j holds source row h + j - ph (zeros outside)
        ws.rows[nr] = pl[ii] + (h + j) * pad.Wp + pad.pw;
        if (k) ws.ks[nr] = k + (i * g.kh + j) * g.kw;
        if (partial) ws.parts[nr] = partial + (i * g.kh + j) * g.kw;
        ++nr;
      }
    }
    fn(h, nr);
  }
}

// out plane d = bias + conv(vol) (zero padding).
template <typename T, int KW>
FUSIONSEG_INLINE void conv_plane_kw(const T* vol, T* out, const PlaneGeometry& g, int64_t d,
                                    const T* k, T bias, Workspace<T>& ws) {
  if (g.kw == 1) {
    for_each_flat_segment<T>(vol, g, d, k, nullptr, ws, [&](int64_t off, int64_t len, int64_t nr) FUSIONSEG_INLINE_LAMBDA {
      conv_row<T, 1, true>(out + off, ws.rows.data(), ws.ks.data(), nr, len, 1, bias, ws.stream);
    });
  } else {
    for_each_padded_row<T>(vol, g, d, k, nullptr, ws.pad_a, ws, [&](int64_t h, int64_t nr) FUSIONSEG_INLINE_LAMBDA {
      conv_row<T, KW, true>(out + h * g.W, ws.rows.data(), ws.ks.data(), nr, g.W, g.kw, bias, ws.stream);
    });
  }
}

// partial[tap] += sum over output plane d of dy * (x at the tap's offset); partial[kvol] += sum dy.
template <typename T, int KW>
FUSIONSEG_INLINE void weight_grad_plane_kw(const T* dy_vol, const T* x_vol, const PlaneGeometry& g,
                                           int64_t d, double* partial, Workspace<T>& ws) {
  const int64_t HW = g.H * g.W;
  const T* dy = dy_vol + d * HW;
  if (g.kw == 1) {
    for_each_flat_segment<T>(x_vol, g, d, nullptr, partial, ws, [&](int64_t off, int64_t len, int64_t nr) FUSIONSEG_INLINE_LAMBDA {
      weight_grad_row<T, 1, true>(dy + off, ws.rows.data(), ws.parts.data(), nr, len, 1);
    });
  } else {
    for_each_padded_row<T>(x_vol, g, d, nullptr, partial, ws.pad_b, ws, [&](int64_t h, int64_t nr) FUSIONSEG_INLINE_LAMBDA {
      weight_grad_row<T, KW, true>(dy + h * g.W, ws.rows.data(), ws.parts.data(), nr, g.W, g.kw);
    });
  }
  partial[g.kd * g.kh * g.kw] += plane_sum(dy, HW);
}

template <typename T>
FUSIONSEG_INLINE void conv_plane_impl(const T* vol, T* out, const PlaneGeometry& g, int64_t d,
                                      const T* k, T bias, Workspace<T>& ws) {
  switch (g.kw) {
    case 3: conv_plane_kw<T, 3>(vol, out, g, d, k, bias, ws); break;
    case 11: conv_plane_kw<T, 11>(vol, out, g, d, k, bias, ws); break;
    default: conv_plane_kw<T, 0>(vol, out, g, d, k, bias, ws); break;  // incl. kw == 1
  }
}

template <typename T>
FUSIONSEG_INLINE void weight_grad_plane_impl(const T* dy, const T* x, const PlaneGeometry& g,
                                             int64_t d, double* partial, Workspace<T>& ws) {
  switch (g.kw) {
    case 3: weight_grad_plane_kw<T, 3>(dy, x, g, d, partial, ws); break;
    case 11: weight_grad_plane_kw<T, 11>(dy, x, g, d, partial, ws); break;
    default: weight_grad_plane_kw<T, 0>(dy, x, g, d, partial, ws); break;
  }
}

// Non-template entry points, one per dtype, each compiled for several instruction sets.
FUSIONSEG_MULTIVERSION void conv_plane_f32(const float* vol, float* out, const PlaneGeometry& g,
                                           int64_t d, const float* k, float bias,
                                           Workspace<float>& ws) {
  conv_plane_impl<float>(vol, out, g, d, k, bias, ws);
}
FUSIONSEG_MULTIVERSION void conv_plane_f64(const double* vol, double* out, const PlaneGeometry& g,
                                           int64_t d, const double* k, double bias,
                                           Workspace<double>& ws) {
  conv_plane_impl<double>(vol, out, g, d, k, bias, ws);
}
FUSIONSEG_MULTIVERSION void weight_grad_plane_f32(const float* dy, const float* x,
                                                  const PlaneGeometry& g, int64_t d,
                                                  double* partial, Workspace<float>& ws) {
  weight_grad_plane_impl<float>(dy, x, g, d, partial, ws);
}
FUSIONSEG_MULTIVERSION void weight_grad_plane_f64(const double* dy, const double* x,
                                                  const PlaneGeometry& g, int64_t d,
                                                  double* partial, Workspace<double>& ws) {
  weight_grad_plane_impl<double>(dy, x, g, d, partial, ws);
}

inline void conv_plane(const float* v, float* o, const PlaneGeometry& g, int64_t d, const float* k,
                       float b, Workspace<float>& ws) {
  conv_plane_f32(v, o, g, d, k, b, ws);
}
inline void conv_plane(const double* v, double* o, const PlaneGeometry& g, int64_t d,
                       const double* k, double b, Workspace<double>& ws) {
  conv_plane_f64(v, o, g, d, k, b, ws);
}
inline void weight_grad_plane(const float* dy, const float* x, const PlaneGeometry& g, int64_t d,
                              double* p, Workspace<float>& ws) {
  weight_grad_plane_f32(dy, x, g, d, p, ws);
}
inline void weight_grad_plane(const double* dy, const double* x, const PlaneGeometry& g, int64_t d,
                              double* p, Workspace<double>& ws) {
  weight_grad_plane_f64(dy, x, g, d, p, ws);
}

template <typename T>
Workspace<T>& thread_workspace() {
  thread_local Workspace<T> ws;
  return ws;
}

// ---------------------------------------------------------------- weights, packed per group
template <typename T>
struct PackedWeights {
  std::array<std::vector<T>, kNumConvGroups> k;     // [gc][kvol], as given
  std::array<std::vector<T>, kNumConvGroups> bias;  // [gc], zero when absent
};

template <typename T>
PackedWeights<T> pack_weights(const IdcConfig& cfg, const std::array<at::Tensor, 4>& weights,
                              const std::array<std::optional<at::Tensor>, 4>& biases,
                              bool flip) {
  // Weights are tiny; converting them only when needed keeps small layers' fixed cost low.
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  auto as_compute = [&](const at::Tensor& t) {
    return (t.scalar_type() == dtype && t.is_contiguous()) ? t : t.to(dtype).contiguous();
  };
  PackedWeights<T> p;
  for (int g = 0; g < kNumConvGroups; ++g) {
    const at::Tensor w = as_compute(weights[g]);
    const T* src = w.data_ptr<T>();
    const int64_t kvol = cfg.kernel_volume(g);
    p.k[g].resize(static_cast<size_t>(cfg.gc * kvol));
    for (int64_t j = 0; j < cfg.gc; ++j)
      for (int64_t i = 0; i < kvol; ++i)  // flipping all three spatial axes = reversing the taps
        p.k[g][j * kvol + i] = src[j * kvol + (flip ? kvol - 1 - i : i)];
    p.bias[g].assign(cfg.gc, T(0));
    if (biases[g].has_value() && biases[g]->defined()) {
      const at::Tensor b = as_compute(*biases[g]);
      std::copy(b.data_ptr<T>(), b.data_ptr<T>() + cfg.gc, p.bias[g].begin());
    }
  }
  return p;
}

PlaneGeometry geometry_of(const IdcConfig& cfg, int g, int64_t D, int64_t H, int64_t W) {
  return PlaneGeometry{D, H, W, cfg.kernel[g][0], cfg.kernel[g][1], cfg.kernel[g][2]};
}

// Grain: at least a few planes' worth of voxels per chunk, so tiny layers don't pay for
// thread hand-off.
int64_t grain_for(int64_t plane_elems) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_elems));
}

// Streaming stores pay off when the output is larger than the last-level cache (the next layer
// could not read it from there anyway) and every vector store is 32-byte aligned: an aligned base
// and rows a multiple of 32 bytes.
constexpr int64_t kStreamingBytes = int64_t(32) << 20;

// Passes that chose streaming stores, so tests can confirm that path ran.
std::atomic<int64_t> g_streaming_passes{0};

template <typename T>
bool use_streaming(const T* out, int64_t numel, int64_t W) {
#ifdef FUSIONSEG_HAVE_STREAM
  const bool stream = numel * int64_t(sizeof(T)) >= kStreamingBytes &&
                      reinterpret_cast<uintptr_t>(out) % 32 == 0 && (W * int64_t(sizeof(T))) % 32 == 0;
  if (stream) g_streaming_passes.fetch_add(1, std::memory_order_relaxed);
  return stream;
#else
  return false;
#endif
}

// y = op(x) for x contiguous float/double. Used for the forward and (flipped, no bias) for dx.
template <typename T>
void conv_all_planes(const T* x, T* y, const IdcConfig& cfg, const PackedWeights<T>& pw,
                     int64_t N, int64_t D, int64_t H, int64_t W) {
  const int64_t C = cfg.channels, HW = H * W, DHW = D * HW;
  const bool stream = use_streaming(y, N * C * DHW, W);
  const std::vector<int64_t> order = interleaved_channels(cfg);
  at::parallel_for(0, N * C * D, grain_for(HW), [&](int64_t begin, int64_t end) {
    Workspace<T>& ws = thread_workspace<T>();
    ws.invalidate();
    ws.stream = stream;
    for (int64_t t = begin; t < end; ++t) {
      const TaskIndex ti = task_of(t, order, D);
      const T* vol = x + (ti.n * C + ti.c) * DHW;
      T* out = y + (ti.n * C + ti.c) * DHW + ti.d * HW;
      const int g = conv_group_of_channel(ti.c, cfg.identity, cfg.gc);
      if (g < 0) {
        copy_plane(out, vol + ti.d * HW, HW, stream);
        continue;
      }
      const int64_t j = ti.c - cfg.identity - g * cfg.gc;
      const int64_t kvol = cfg.kernel_volume(g);
      conv_plane(vol, out, geometry_of(cfg, g, D, H, W), ti.d, pw.k[g].data() + j * kvol,
                 pw.bias[g][j], ws);
    }
    stream_fence(stream);
  });
}

std::array<at::Tensor, 4> weights_of(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                                     const at::Tensor& d) {
  return {a, b, c, d};
}

// Kernels compute in float or double; float16/bfloat16 inputs are computed in float.
at::ScalarType compute_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor forward_cpu(const at::Tensor& x, const at::Tensor& cube_weight,
                       const std::optional<at::Tensor>& cube_bias, const at::Tensor& w_weight,
                       const std::optional<at::Tensor>& w_bias, const at::Tensor& h_weight,
                       const std::optional<at::Tensor>& h_bias, const at::Tensor& d_weight,
                       const std::optional<at::Tensor>& d_bias) {
  const IdcConfig cfg = check_inception_dwconv3d_args(x, cube_weight, cube_bias, w_weight, w_bias,
                                                      h_weight, h_bias, d_weight, d_bias);
  TORCH_CHECK(x.device().is_cpu(), "the cpu backend of inception_dwconv3d needs CPU tensors, got ",
              x.device());
  const auto ct = compute_dtype(x.scalar_type());
  const at::Tensor xc = x.to(ct).contiguous();
  at::Tensor y = at::empty_like(xc, at::MemoryFormat::Contiguous);
  poison(y);
  const int64_t N = x.size(0), D = x.size(2), H = x.size(3), W = x.size(4);
  const auto weights = weights_of(cube_weight, w_weight, h_weight, d_weight);
  const std::array<std::optional<at::Tensor>, 4> biases = {cube_bias, w_bias, h_bias, d_bias};
  if (y.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "inception_dwconv3d_forward_cpu", [&] {
      const auto pw = pack_weights<scalar_t>(cfg, weights, biases, /*flip=*/false);
      conv_all_planes<scalar_t>(xc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), cfg, pw, N, D, H,
                                W);
    });
  }
  return match_layout(y, x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
backward_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& cube_weight,
             const at::Tensor& w_weight, const at::Tensor& h_weight, const at::Tensor& d_weight) {
  const IdcConfig cfg = check_inception_dwconv3d_args(x, cube_weight, {}, w_weight, {}, h_weight,
                                                      {}, d_weight, {});
  TORCH_CHECK(x.device().is_cpu() && grad_y.device().is_cpu(),
              "the cpu backend of inception_dwconv3d needs CPU tensors");
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "inception_dwconv3d backward: grad_y has shape ",
              grad_y.sizes(), " but the input has shape ", x.sizes());
  const auto ct = compute_dtype(x.scalar_type());
  const at::Tensor xc = x.to(ct).contiguous();
  const at::Tensor gyc = grad_y.to(ct).contiguous();
  at::Tensor gx = at::empty_like(xc, at::MemoryFormat::Contiguous);
  poison(gx);
  const int64_t N = x.size(0), C = cfg.channels, D = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t HW = H * W, DHW = D * HW;
  const auto weights = weights_of(cube_weight, w_weight, h_weight, d_weight);

  // Per-(n, conv channel, d) partial sums: kvol weight taps then the bias term.
  int64_t stride = 1;
  for (int g = 0; g < kNumConvGroups; ++g) stride = std::max(stride, cfg.kernel_volume(g) + 1);
  const int64_t conv_channels = 4 * cfg.gc;
  std::vector<double> partials(static_cast<size_t>(N * conv_channels * D * stride), 0.0);

  if (gx.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "inception_dwconv3d_backward_cpu", [&] {
      const auto flipped = pack_weights<scalar_t>(cfg, weights, {}, /*flip=*/true);
      const scalar_t* dy = gyc.data_ptr<scalar_t>();
      const scalar_t* xp = xc.data_ptr<scalar_t>();
      scalar_t* dx = gx.data_ptr<scalar_t>();
      const bool stream = use_streaming(dx, N * C * DHW, W);
      const std::vector<int64_t> order = interleaved_channels(cfg);
      at::parallel_for(0, N * C * D, grain_for(HW), [&](int64_t begin, int64_t end) {
        Workspace<scalar_t>& ws = thread_workspace<scalar_t>();
        ws.invalidate();
        ws.stream = stream;
        for (int64_t t = begin; t < end; ++t) {
          const TaskIndex ti = task_of(t, order, D);
          const int64_t base = (ti.n * C + ti.c) * DHW;
          const int g = conv_group_of_channel(ti.c, cfg.identity, cfg.gc);
          if (g < 0) {
            copy_plane(dx + base + ti.d * HW, dy + base + ti.d * HW, HW, stream);
            continue;
          }
          const int64_t j = ti.c - cfg.identity - g * cfg.gc;
          const int64_t kvol = cfg.kernel_volume(g);
          const PlaneGeometry geo = geometry_of(cfg, g, D, H, W);
          conv_plane(dy + base, dx + base + ti.d * HW, geo, ti.d, flipped.k[g].data() + j * kvol,
                     scalar_t(0), ws);
          double* partial =
              partials.data() + ((ti.n * conv_channels + (ti.c - cfg.identity)) * D + ti.d) * stride;
          weight_grad_plane(dy + base, xp + base, geo, ti.d, partial, ws);
        }
        stream_fence(stream);
      });
    });
  }

  // Fixed-order reduction of the partials (over n, then d), written straight into the gradients
  // in the weights' dtype: no temporaries, which matters for the fixed cost of small layers.
  std::array<at::Tensor, 4> gw, gb;
  std::vector<double> sums;
  for (int g = 0; g < kNumConvGroups; ++g) {
    const int64_t kvol = cfg.kernel_volume(g);
    sums.assign(static_cast<size_t>(cfg.gc * (kvol + 1)), 0.0);
    for (int64_t j = 0; j < cfg.gc; ++j) {
      const int64_t cc = g * cfg.gc + j;
      double* acc = sums.data() + j * (kvol + 1);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t d = 0; d < D; ++d) {
          const double* p = partials.data() + ((n * conv_channels + cc) * D + d) * stride;
          for (int64_t tap = 0; tap <= kvol; ++tap) acc[tap] += p[tap];
        }
    }
    const auto options = weights[g].options().memory_format(at::MemoryFormat::Contiguous);
    gw[g] = at::empty(weights[g].sizes(), options);
    gb[g] = at::empty({cfg.gc}, options);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gw[g].scalar_type(), "idc_grad_weights", [&] {
      scalar_t* w_out = gw[g].data_ptr<scalar_t>();
      scalar_t* b_out = gb[g].data_ptr<scalar_t>();
      for (int64_t j = 0; j < cfg.gc; ++j) {
        for (int64_t tap = 0; tap < kvol; ++tap)
          w_out[j * kvol + tap] = static_cast<scalar_t>(sums[j * (kvol + 1) + tap]);
        b_out[j] = static_cast<scalar_t>(sums[j * (kvol + 1) + kvol]);
      }
    });
  }
  at::Tensor grad_x = match_layout(gx.to(x.scalar_type()), x);
  return {grad_x, gw[0], gw[1], gw[2], gw[3], gb[0], gb[1], gb[2], gb[3]};
}

}  // namespace
}  // namespace fusionseg

TORCH_LIBRARY_IMPL(fusionseg, CPU, m) {
  m.impl("inception_dwconv3d_forward", &fusionseg::forward_cpu);
  m.impl("inception_dwconv3d_backward", &fusionseg::backward_cpu);
}

// Diagnostics for tests: how many CPU kernel passes chose non-temporal (streaming) stores. The
// schema is defined with the others (ops/inception_dwconv3d.cpp). The op takes no tensor, so the
// dispatcher has no backend key to pick a CPU kernel by: the kernel is registered under
// CompositeImplicitAutograd (where m.def(schema, fn) put it before), which a call with no
// tensor arguments reaches.
TORCH_LIBRARY_IMPL(fusionseg, CompositeImplicitAutograd, m) {
  m.impl("cpu_streaming_store_passes",
         [] { return fusionseg::g_streaming_passes.load(std::memory_order_relaxed); });
}
