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
#include <array>
#include <cstring>
#include <limits>
#include <vector>

#include "fusionseg/inception_dwconv3d.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
#define FUSIONSEG_MULTIVERSION \
  __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define FUSIONSEG_MULTIVERSION
#endif
#define FUSIONSEG_INLINE inline __attribute__((always_inline))

namespace fusionseg {
namespace {

// Tasks are ordered (n, d-slab, c, d within slab): every contiguous range of tasks mixes
// identity and convolution channels (balanced threads), while a channel's consecutive planes
// stay together so the D band's 11-plane window is reused from cache.
constexpr int64_t kSlab = 8;

struct TaskIndex {
  int64_t n, c, d;
};

inline TaskIndex task_of(int64_t t, int64_t C, int64_t D) {
  const int64_t per_n = C * D;
  TaskIndex r;
  r.n = t / per_n;
  int64_t rem = t % per_n;
  const int64_t slab_start = (rem / (C * kSlab)) * kSlab;  // full slabs come first
  const int64_t slab_len = std::min(kSlab, D - slab_start);
  rem -= slab_start * C;
  r.c = rem / slab_len;
  r.d = slab_start + rem % slab_len;
  return r;
}

// ---------------------------------------------------------------- row primitives
// o[w] += sum_t k[t] * row[w + t - kw/2], zero outside [0, W).
template <typename T, int KW>
FUSIONSEG_INLINE void row_taps(T* __restrict o, const T* __restrict row, const T* __restrict k,
                               int64_t W, int64_t kw_runtime) {
  const int64_t kw = KW > 0 ? KW : kw_runtime;
  const int64_t pw = kw / 2;
  const int64_t lo = std::min(pw, W);
  const int64_t hi = std::max(W - pw, lo);
  for (int64_t w = 0; w < lo; ++w) {  // left edge, bounds-checked
    T acc = o[w];
    for (int64_t t = 0; t < kw; ++t) {
      const int64_t i = w + t - pw;
      if (i >= 0 && i < W) acc += k[t] * row[i];
    }
    o[w] = acc;
  }
  if (KW > 0) {  // interior: taps unrolled, vectorized along W
    for (int64_t w = lo; w < hi; ++w) {
      T acc = o[w];
#pragma GCC unroll 16
      for (int t = 0; t < (KW > 0 ? KW : 1); ++t) acc += k[t] * row[w + t - pw];
      o[w] = acc;
    }
  } else {  // generic kernel width: one vectorized axpy per tap
    for (int64_t t = 0; t < kw; ++t) {
      const T c = k[t];
      const T* __restrict r = row + t - pw;
      for (int64_t w = lo; w < hi; ++w) o[w] += c * r[w];
    }
  }
  for (int64_t w = hi; w < W; ++w) {  // right edge
    T acc = o[w];
    for (int64_t t = 0; t < kw; ++t) {
      const int64_t i = w + t - pw;
      if (i >= 0 && i < W) acc += k[t] * row[i];
    }
    o[w] = acc;
  }
}

// acc[t] += sum_w dy[w] * row[w + t - kw/2] over the w where the index is inside [0, W).
template <typename T>
FUSIONSEG_INLINE void row_tap_dots(const T* __restrict dy, const T* __restrict row, int64_t W,
                                   int64_t kw, double* __restrict acc) {
  const int64_t pw = kw / 2;
  for (int64_t t = 0; t < kw; ++t) {
    const int64_t s = t - pw;
    const int64_t lo = std::max<int64_t>(0, -s);
    const int64_t hi = std::min<int64_t>(W, W - s);
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t w = lo; w < hi; ++w) sum += dy[w] * row[w + s];
    acc[t] += static_cast<double>(sum);
  }
}

template <typename T>
FUSIONSEG_INLINE double plane_sum(const T* __restrict p, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += p[i];
  return static_cast<double>(sum);
}

// ---------------------------------------------------------------- plane kernels
struct PlaneGeometry {
  int64_t D, H, W;
  int64_t kd, kh, kw;
};

// out[h][w] = bias + sum_{i,j,t} k[i][j][t] * vol[d+i-pd][h+j-ph][w+t-pw] (zero padding).
template <typename T, int KW>
FUSIONSEG_INLINE void conv_plane_impl(const T* __restrict vol, T* __restrict out,
                                      const PlaneGeometry& g, int64_t d, const T* __restrict k,
                                      T bias) {
  const int64_t HW = g.H * g.W, pd = g.kd / 2, ph = g.kh / 2;
  for (int64_t h = 0; h < g.H; ++h) {
    T* __restrict o = out + h * g.W;
    for (int64_t w = 0; w < g.W; ++w) o[w] = bias;
    for (int64_t i = 0; i < g.kd; ++i) {
      const int64_t di = d + i - pd;
      if (di < 0 || di >= g.D) continue;
      for (int64_t j = 0; j < g.kh; ++j) {
        const int64_t hj = h + j - ph;
        if (hj < 0 || hj >= g.H) continue;
        row_taps<T, KW>(o, vol + di * HW + hj * g.W, k + (i * g.kh + j) * g.kw, g.W, g.kw);
      }
    }
  }
}

template <typename T>
FUSIONSEG_INLINE void conv_plane_dispatch(const T* vol, T* out, const PlaneGeometry& g, int64_t d,
                                          const T* k, T bias) {
  switch (g.kw) {
    case 1: conv_plane_impl<T, 1>(vol, out, g, d, k, bias); break;
    case 3: conv_plane_impl<T, 3>(vol, out, g, d, k, bias); break;
    case 11: conv_plane_impl<T, 11>(vol, out, g, d, k, bias); break;
    default: conv_plane_impl<T, 0>(vol, out, g, d, k, bias); break;
  }
}

// partial[tap] += sum over plane d of dy * shifted x; partial[kvol] += sum of dy.
template <typename T>
FUSIONSEG_INLINE void weight_grad_plane_impl(const T* __restrict dy_vol, const T* __restrict x_vol,
                                             const PlaneGeometry& g, int64_t d,
                                             double* __restrict partial) {
  const int64_t HW = g.H * g.W, pd = g.kd / 2, ph = g.kh / 2;
  const T* dy_plane = dy_vol + d * HW;
  for (int64_t h = 0; h < g.H; ++h) {
    const T* dy_row = dy_plane + h * g.W;
    for (int64_t i = 0; i < g.kd; ++i) {
      const int64_t di = d + i - pd;
      if (di < 0 || di >= g.D) continue;
      for (int64_t j = 0; j < g.kh; ++j) {
        const int64_t hj = h + j - ph;
        if (hj < 0 || hj >= g.H) continue;
        row_tap_dots<T>(dy_row, x_vol + di * HW + hj * g.W, g.W, g.kw,
                        partial + (i * g.kh + j) * g.kw);
      }
    }
  }
  partial[g.kd * g.kh * g.kw] += plane_sum(dy_plane, HW);
}

// Non-template entry points, one per dtype, each compiled for several instruction sets.
FUSIONSEG_MULTIVERSION void conv_plane_f32(const float* vol, float* out, const PlaneGeometry& g,
                                           int64_t d, const float* k, float bias) {
  conv_plane_dispatch<float>(vol, out, g, d, k, bias);
}
FUSIONSEG_MULTIVERSION void conv_plane_f64(const double* vol, double* out, const PlaneGeometry& g,
                                           int64_t d, const double* k, double bias) {
  conv_plane_dispatch<double>(vol, out, g, d, k, bias);
}
FUSIONSEG_MULTIVERSION void weight_grad_plane_f32(const float* dy, const float* x,
                                                  const PlaneGeometry& g, int64_t d,
                                                  double* partial) {
  weight_grad_plane_impl<float>(dy, x, g, d, partial);
}
FUSIONSEG_MULTIVERSION void weight_grad_plane_f64(const double* dy, const double* x,
                                                  const PlaneGeometry& g, int64_t d,
                                                  double* partial) {
  weight_grad_plane_impl<double>(dy, x, g, d, partial);
}

inline void conv_plane(const float* v, float* o, const PlaneGeometry& g, int64_t d, const float* k,
                       float b) {
  conv_plane_f32(v, o, g, d, k, b);
}
inline void conv_plane(const double* v, double* o, const PlaneGeometry& g, int64_t d,
                       const double* k, double b) {
  conv_plane_f64(v, o, g, d, k, b);
}
inline void weight_grad_plane(const float* dy, const float* x, const PlaneGeometry& g, int64_t d,
                              double* p) {
  weight_grad_plane_f32(dy, x, g, d, p);
}
inline void weight_grad_plane(const double* dy, const double* x, const PlaneGeometry& g, int64_t d,
                              double* p) {
  weight_grad_plane_f64(dy, x, g, d, p);
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
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  PackedWeights<T> p;
  for (int g = 0; g < kNumConvGroups; ++g) {
    at::Tensor w = weights[g].to(at::kCPU, dtype);
    if (flip) w = w.flip({2, 3, 4});
    w = w.contiguous();
    p.k[g].assign(w.data_ptr<T>(), w.data_ptr<T>() + w.numel());
    p.bias[g].assign(cfg.gc, T(0));
    if (biases[g].has_value() && biases[g]->defined()) {
      at::Tensor b = biases[g]->to(at::kCPU, dtype).contiguous();
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

void poison(at::Tensor& t) {
  if (poison_outputs_enabled()) t.fill_(std::numeric_limits<double>::quiet_NaN());
}

// y = op(x) for x contiguous float/double. Used for the forward and (flipped, no bias) for dx.
template <typename T>
void conv_all_planes(const T* x, T* y, const IdcConfig& cfg, const PackedWeights<T>& pw,
                     int64_t N, int64_t D, int64_t H, int64_t W) {
  const int64_t C = cfg.channels, HW = H * W, DHW = D * HW;
  at::parallel_for(0, N * C * D, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const TaskIndex ti = task_of(t, C, D);
      const T* vol = x + (ti.n * C + ti.c) * DHW;
      T* out = y + (ti.n * C + ti.c) * DHW + ti.d * HW;
      const int g = conv_group_of_channel(ti.c, cfg.identity, cfg.gc);
      if (g < 0) {
        std::memcpy(out, vol + ti.d * HW, sizeof(T) * HW);
        continue;
      }
      const int64_t j = ti.c - cfg.identity - g * cfg.gc;
      const int64_t kvol = cfg.kernel_volume(g);
      conv_plane(vol, out, geometry_of(cfg, g, D, H, W), ti.d, pw.k[g].data() + j * kvol,
                 pw.bias[g][j]);
    }
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

// Returns out laid out like `like` (empty_like's rule), from the contiguous result.
at::Tensor match_layout(const at::Tensor& contiguous_result, const at::Tensor& like) {
  if (contiguous_result.scalar_type() == like.scalar_type() &&
      contiguous_result.strides() == at::empty_like(like, at::MemoryFormat::Preserve).strides())
    return contiguous_result;
  at::Tensor out = at::empty_like(like);
  out.copy_(contiguous_result);
  return out;
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
      at::parallel_for(0, N * C * D, grain_for(HW), [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const TaskIndex ti = task_of(t, C, D);
          const int64_t base = (ti.n * C + ti.c) * DHW;
          const int g = conv_group_of_channel(ti.c, cfg.identity, cfg.gc);
          if (g < 0) {
            std::memcpy(dx + base + ti.d * HW, dy + base + ti.d * HW, sizeof(scalar_t) * HW);
            continue;
          }
          const int64_t j = ti.c - cfg.identity - g * cfg.gc;
          const int64_t kvol = cfg.kernel_volume(g);
          const PlaneGeometry geo = geometry_of(cfg, g, D, H, W);
          conv_plane(dy + base, dx + base + ti.d * HW, geo, ti.d, flipped.k[g].data() + j * kvol,
                     scalar_t(0));
          double* partial =
              partials.data() + ((ti.n * conv_channels + (ti.c - cfg.identity)) * D + ti.d) * stride;
          weight_grad_plane(dy + base, xp + base, geo, ti.d, partial);
        }
      });
    });
  }

  // Fixed-order reduction of the partials: over n, then d.
  std::array<at::Tensor, 4> gw, gb;
  for (int g = 0; g < kNumConvGroups; ++g) {
    const int64_t kvol = cfg.kernel_volume(g);
    at::Tensor wsum = at::zeros({cfg.gc, kvol + 1}, at::kDouble);
    double* ws = wsum.data_ptr<double>();
    for (int64_t j = 0; j < cfg.gc; ++j) {
      const int64_t cc = g * cfg.gc + j;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t d = 0; d < D; ++d) {
          const double* p = partials.data() + ((n * conv_channels + cc) * D + d) * stride;
          for (int64_t tap = 0; tap < kvol; ++tap) ws[j * (kvol + 1) + tap] += p[tap];
          ws[j * (kvol + 1) + kvol] += p[kvol];
        }
    }
    const auto wdtype = weights[g].scalar_type();
    gw[g] = wsum.narrow(1, 0, kvol).reshape(weights[g].sizes()).to(wdtype).contiguous();
    gb[g] = wsum.select(1, kvol).to(wdtype).contiguous();
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
