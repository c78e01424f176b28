// Fused CUDA kernels for fusionseg::instance_norm_leaky_relu_{forward,backward,_}: the same
// algorithm, sums and orders as the CPU kernels (cpu/instance_norm_act_kernel.cpp) and the Triton
// kernels (fusionseg_kernels/ops/instance_norm_act/triton_impl.py).
//
// Each (n, c) plane of S = D*H*W elements is cut into chunks of kChunk elements; a block of
// kThreads threads handles one chunk of one plane (the grid is planes x chunks, so a few large
// planes still fill the GPU):
//   forward   moments_kernel: per-chunk sums of x - shift and (x - shift)^2 (shift = the plane's
//             first value, so the variance does not cancel), in the accumulation type;
//             statistics_kernel: one thread per plane adds its chunks in double, in chunk order,
//             and writes mean, rstd and a = rstd * weight, b = bias - mean * a;
//             apply_kernel: y = lrelu(x * a + b) (y may be x: the in-place op).
//   backward  grad_moments_kernel: per-chunk sums of dz and dz * xhat (dz = dy * lrelu'(z), z and
//             xhat recomputed from x); grad_statistics_kernel: one thread per channel adds the
//             chunks of each sample's plane, then the samples, in double and in a fixed order
//             (mean(dz), mean(dz * xhat) per plane; the weight and bias gradients per channel);
//             grad_apply_kernel: dx = rstd * w * (dz - mean(dz) - xhat * mean(dz * xhat)).
// Loads are in the tensor's dtype (16-byte vectors when the plane size and the pointers allow),
// arithmetic in float32 (float64 for float64), stores in the tensor's dtype. No atomics: results
// are deterministic. Inputs in another layout than contiguous NCDHW (channels_last_3d included)
// are made contiguous first and the result is returned laid out like empty_like(x), as the other
// backends.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "fusionseg/cuda_common.cuh"
#include "fusionseg/inception_dwconv3d.h"  // poison, match_layout
#include "fusionseg/instance_norm_act.h"

namespace fusionseg {
namespace {

using namespace cuda_common;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Elements of one plane per block: 4 vectors of 4 float32 per thread. Small enough that the
// network's mid-size calls make several waves of blocks, large enough that the partial sums stay
// small (as the Triton kernels' CHUNK).
constexpr int kChunk = 4096;

// A 16-byte vector of T (one load or store instruction).
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / static_cast<int>(sizeof(T));
  T v[kSize];
};

// V consecutive elements at p (V == 1: one scalar; otherwise one aligned 16-byte vector).
template <int V, typename T, typename Acc>
__device__ __forceinline__ void load_n(const T* p, Acc* out) {
  if constexpr (V == 1) {
    out[0] = static_cast<Acc>(p[0]);
  } else {
    const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(p);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = static_cast<Acc>(pk.v[k]);
  }
}

template <int V, typename T, typename Acc>
__device__ __forceinline__ void store_n(T* p, const Acc* in) {
  if constexpr (V == 1) {
    p[0] = static_cast<T>(in[0]);
  } else {
    Pack<T> pk;
#pragma unroll
    for (int k = 0; k < V; ++k) pk.v[k] = static_cast<T>(in[k]);
    *reinterpret_cast<Pack<T>*>(p) = pk;
  }
}

// Where a block works: its plane (n * C + c), the chunk's first element in the plane and its length.
struct ChunkOf {
  int64_t plane, start;
  int n;
};

__device__ __forceinline__ ChunkOf chunk_of_block(int64_t S, int64_t chunks) {
  const int64_t block = blockIdx.x;
  ChunkOf o;
  o.plane = block / chunks;
  o.start = (block % chunks) * kChunk;
  const int64_t left = S - o.start;
  o.n = static_cast<int>(left < kChunk ? left : kChunk);
  return o;
}

// (sum of s, sum of q) over the block's threads into partials[2 * block], [2 * block + 1]: warps
// by butterfly, then the warps' sums in warp order by thread 0.
template <typename Acc>
__device__ __forceinline__ void write_block_sums(Acc s, Acc q, Acc* __restrict__ partials) {
  __shared__ Acc warp_s[kWarps], warp_q[kWarps];
  s = warp_sum(s);
  q = warp_sum(q);
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  if (lane == 0) {
    warp_s[warp] = s;
    warp_q[warp] = q;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    s = 0;
    q = 0;
    for (int w = 0; w < kWarps; ++w) {
      s += warp_s[w];
      q += warp_q[w];
    }
    partials[2 * int64_t(blockIdx.x)] = s;
    partials[2 * int64_t(blockIdx.x) + 1] = q;
  }
}

// ------------------------------------------------------------------ forward

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    moments_kernel(const T* __restrict__ x, at::opmath_type<T>* __restrict__ partials, int64_t S, int64_t chunks) {
  using Acc = at::opmath_type<T>;
  const ChunkOf ch = chunk_of_block(S, chunks);
  const T* px = x + ch.plane * S;
  const Acc shift = static_cast<Acc>(px[0]);
  Acc s = 0, q = 0;
  for (int i = static_cast<int>(threadIdx.x) * V; i < ch.n; i += kThreads * V) {
    Acc v[V];
    load_n<V>(px + ch.start + i, v);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const Acc d = v[k] - shift;
      s += d;
      q += d * d;
    }
  }
  write_block_sums(s, q, partials);
}

// One thread per plane: mean, rstd and the plane's affine coefficients a, b of y = lrelu(x * a + b).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    statistics_kernel(const T* __restrict__ x, const at::opmath_type<T>* __restrict__ partials,
                      const at::opmath_type<T>* __restrict__ weight, const at::opmath_type<T>* __restrict__ bias,
                      int64_t planes, int64_t C, int64_t S, int64_t chunks, double eps,
                      at::opmath_type<T>* __restrict__ mean, at::opmath_type<T>* __restrict__ rstd,
                      at::opmath_type<T>* __restrict__ a, at::opmath_type<T>* __restrict__ b) {
  using Acc = at::opmath_type<T>;
  const int64_t plane = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (plane >= planes) return;
  double s = 0, q = 0;
  for (int64_t k = 0; k < chunks; ++k) {
    s += static_cast<double>(partials[2 * (plane * chunks + k)]);
    q += static_cast<double>(partials[2 * (plane * chunks + k) + 1]);
  }
  const double m = s / static_cast<double>(S);
  const double var_raw = q / static_cast<double>(S) - m * m;
  const double var = var_raw > 0 ? var_raw : 0.0;
  const Acc mu = static_cast<Acc>(static_cast<double>(static_cast<Acc>(x[plane * S])) + m);
  const Acc r = static_cast<Acc>(1.0 / sqrt(var + eps));
  const int64_t c = plane % C;
  const Acc w = weight != nullptr ? weight[c] : Acc(1), bb = bias != nullptr ? bias[c] : Acc(0);
  mean[plane] = mu;
  rstd[plane] = r;
  a[plane] = r * w;
  b[plane] = bb - mu * (r * w);
}

// y may be x (in place): no __restrict__ on them.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    apply_kernel(const T* x, T* y, const at::opmath_type<T>* __restrict__ a, const at::opmath_type<T>* __restrict__ b,
                 int64_t S, int64_t chunks, at::opmath_type<T> slope) {
  using Acc = at::opmath_type<T>;
  const ChunkOf ch = chunk_of_block(S, chunks);
  const Acc pa = a[ch.plane], pb = b[ch.plane];
  const int64_t base = ch.plane * S + ch.start;
  for (int i = static_cast<int>(threadIdx.x) * V; i < ch.n; i += kThreads * V) {
    Acc v[V];
    load_n<V>(x + base + i, v);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const Acc z = v[k] * pa + pb;
      v[k] = z > Acc(0) ? z : z * slope;
    }
    store_n<V>(y + base + i, v);
  }
}

// ------------------------------------------------------------------ backward

// A plane's forward statistics and affine parameters, as the backward kernels read them.
template <typename Acc>
struct PlaneCoefficients {
  Acc mean, rstd, w, b;
};

template <typename Acc>
__device__ __forceinline__ PlaneCoefficients<Acc> coefficients(int64_t plane, int64_t C, const Acc* mean,
                                                               const Acc* rstd, const Acc* weight, const Acc* bias) {
  const int64_t c = plane % C;
  return {mean[plane], rstd[plane], weight != nullptr ? weight[c] : Acc(1), bias != nullptr ? bias[c] : Acc(0)};
}

// dz = dy * lrelu'(z) and xhat at one element, z and xhat recomputed from x
template <typename Acc>
__device__ __forceinline__ void dz_and_xhat(Acc g, Acc xv, const PlaneCoefficients<Acc>& p, Acc slope, Acc& dz,
                                            Acc& xhat) {
  xhat = (xv - p.mean) * p.rstd;
  dz = xhat * p.w + p.b > Acc(0) ? g : g * slope;
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    grad_moments_kernel(const T* __restrict__ dy, const T* __restrict__ x, const at::opmath_type<T>* __restrict__ mean,
                        const at::opmath_type<T>* __restrict__ rstd, const at::opmath_type<T>* __restrict__ weight,
                        const at::opmath_type<T>* __restrict__ bias, at::opmath_type<T>* __restrict__ partials,
                        int64_t C, int64_t S, int64_t chunks, at::opmath_type<T> slope) {
  using Acc = at::opmath_type<T>;
  const ChunkOf ch = chunk_of_block(S, chunks);
  const PlaneCoefficients<Acc> p = coefficients(ch.plane, C, mean, rstd, weight, bias);
  const int64_t base = ch.plane * S + ch.start;
  Acc s = 0, q = 0;
  for (int i = static_cast<int>(threadIdx.x) * V; i < ch.n; i += kThreads * V) {
    Acc g[V], xv[V];
    load_n<V>(dy + base + i, g);
    load_n<V>(x + base + i, xv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      Acc dz, xhat;
      dz_and_xhat(g[k], xv[k], p, slope, dz, xhat);
      s += dz;
      q += dz * xhat;
    }
  }
  write_block_sums(s, q, partials);
}

// One thread per channel: per plane (n, c) mean(dz) and mean(dz * xhat) (c1, c2); per channel,
// when param_grads is not null, (sum of dz * xhat, sum of dz) over the samples: the weight and
// bias gradients, in double.
template <typename Acc>
__global__ void __launch_bounds__(kThreads)
    grad_statistics_kernel(const Acc* __restrict__ partials, int64_t N, int64_t C, int64_t S, int64_t chunks,
                           Acc* __restrict__ c1, Acc* __restrict__ c2, double* __restrict__ param_grads) {
  const int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= C) return;
  double sum_dzx = 0, sum_dz = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t plane = n * C + c;
    double s = 0, q = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      s += static_cast<double>(partials[2 * (plane * chunks + k)]);
      q += static_cast<double>(partials[2 * (plane * chunks + k) + 1]);
    }
    c1[plane] = static_cast<Acc>(s / static_cast<double>(S));
    c2[plane] = static_cast<Acc>(q / static_cast<double>(S));
    sum_dz += s;
    sum_dzx += q;
  }
  if (param_grads != nullptr) {
    param_grads[2 * c] = sum_dzx;
    param_grads[2 * c + 1] = sum_dz;
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    grad_apply_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                      const at::opmath_type<T>* __restrict__ mean, const at::opmath_type<T>* __restrict__ rstd,
                      const at::opmath_type<T>* __restrict__ weight, const at::opmath_type<T>* __restrict__ bias,
                      const at::opmath_type<T>* __restrict__ c1, const at::opmath_type<T>* __restrict__ c2, int64_t C,
                      int64_t S, int64_t chunks, at::opmath_type<T> slope) {
  using Acc = at::opmath_type<T>;
  const ChunkOf ch = chunk_of_block(S, chunks);
  const PlaneCoefficients<Acc> p = coefficients(ch.plane, C, mean, rstd, weight, bias);
  const Acc m1 = c1[ch.plane], m2 = c2[ch.plane], scale = p.rstd * p.w;
  const int64_t base = ch.plane * S + ch.start;
  for (int i = static_cast<int>(threadIdx.x) * V; i < ch.n; i += kThreads * V) {
    Acc g[V], xv[V];
    load_n<V>(dy + base + i, g);
    load_n<V>(x + base + i, xv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      Acc dz, xhat;
      dz_and_xhat(g[k], xv[k], p, slope, dz, xhat);
      g[k] = scale * (dz - m1 - xhat * m2);
    }
    store_n<V>(dx + base + i, g);
  }
}

// ------------------------------------------------------------------ host side

struct Geometry {
  int64_t N, C, S, planes, chunks;
  unsigned blocks;  // planes * chunks
};

Geometry geometry(const at::Tensor& x) {
  Geometry g;
  g.N = x.size(0);
  g.C = x.size(1);
  g.S = x.size(2) * x.size(3) * x.size(4);
  g.planes = g.N * g.C;
  g.chunks = (g.S + kChunk - 1) / kChunk;
  const int64_t blocks = g.planes * g.chunks;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "instance_norm_leaky_relu (cuda): input of shape ",
              x.sizes(), " needs more blocks than a grid holds");
  g.blocks = static_cast<unsigned>(blocks);
  return g;
}

unsigned blocks_for(int64_t threads_needed) { return static_cast<unsigned>((threads_needed + kThreads - 1) / kThreads); }

// The affine parameter in the accumulation dtype, contiguous (undefined when absent).
at::Tensor param_in(const std::optional<at::Tensor>& p, at::ScalarType acc) {
  if (!p.has_value() || !p->defined()) return at::Tensor();
  return p->to(acc).contiguous();
}

template <typename A>
const A* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<A>() : nullptr;
}

// Whether the 16-byte vector kernels may run: every plane starts on a vector boundary.
template <typename T>
bool vector_path(int64_t S, std::initializer_list<const void*> pointers) {
  return S % Pack<T>::kSize == 0 && is_aligned16(pointers);
}

// y = the op applied to xc (contiguous NCDHW, numel() > 0); y may be xc. Returns (mean, rstd).
template <typename T>
std::tuple<at::Tensor, at::Tensor> forward_into(const at::Tensor& xc, at::Tensor& y,
                                                const std::optional<at::Tensor>& weight,
                                                const std::optional<at::Tensor>& bias, double eps, double slope) {
  using Acc = at::opmath_type<T>;
  const Geometry g = geometry(xc);
  const auto acc_options = xc.options().dtype(c10::CppTypeToScalarType<Acc>::value);
  const at::Tensor w = param_in(weight, acc_options.dtype().toScalarType());
  const at::Tensor b = param_in(bias, acc_options.dtype().toScalarType());
  at::Tensor partials = at::empty({static_cast<int64_t>(g.blocks), 2}, acc_options);
  at::Tensor mean = at::empty({g.N, g.C}, acc_options), rstd = at::empty({g.N, g.C}, acc_options);
  // y = lrelu(x * a + offset) per plane
  at::Tensor a = at::empty({g.planes}, acc_options), offset = at::empty({g.planes}, acc_options);
  const auto stream = current_stream();
  const T* x = xc.const_data_ptr<T>();
  T* out = y.mutable_data_ptr<T>();
  constexpr int V = Pack<T>::kSize;
  // the vector and scalar instances have one signature: pick the pointer, launch once
  const bool vec = vector_path<T>(g.S, {x, out});
  const auto moments = vec ? moments_kernel<T, V> : moments_kernel<T, 1>;
  const auto apply = vec ? apply_kernel<T, V> : apply_kernel<T, 1>;
  const auto statistics = statistics_kernel<T>;
  FUSIONSEG_LAUNCH(moments, g.blocks, 0, stream, x, partials.mutable_data_ptr<Acc>(), g.S, g.chunks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  FUSIONSEG_LAUNCH(statistics, blocks_for(g.planes), 0, stream, x, partials.const_data_ptr<Acc>(),
                   ptr_or_null<Acc>(w), ptr_or_null<Acc>(b), g.planes, g.C, g.S, g.chunks, eps,
                   mean.mutable_data_ptr<Acc>(), rstd.mutable_data_ptr<Acc>(), a.mutable_data_ptr<Acc>(),
                   offset.mutable_data_ptr<Acc>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const Acc s = static_cast<Acc>(slope);
  FUSIONSEG_LAUNCH(apply, g.blocks, 0, stream, x, out, a.const_data_ptr<Acc>(), offset.const_data_ptr<Acc>(), g.S,
                   g.chunks, s);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {mean, rstd};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(const at::Tensor& gc, const at::Tensor& xc,
                                                             const at::Tensor& mean_in, const at::Tensor& rstd_in,
                                                             const std::optional<at::Tensor>& weight,
                                                             const std::optional<at::Tensor>& bias, double slope) {
  using Acc = at::opmath_type<T>;
  const Geometry g = geometry(xc);
  const auto acc_options = xc.options().dtype(c10::CppTypeToScalarType<Acc>::value);
  const at::ScalarType acc = acc_options.dtype().toScalarType();
  const bool affine = weight.has_value() && weight->defined();
  at::Tensor dx = at::empty_like(xc, at::MemoryFormat::Contiguous);
  poison(dx);
  at::Tensor param_grads = at::zeros({g.C, 2}, xc.options().dtype(at::kDouble));
  if (xc.numel() > 0) {
    const at::Tensor mean = mean_in.reshape({-1}).to(acc).contiguous(), rstd = rstd_in.reshape({-1}).to(acc).contiguous();
    const at::Tensor w = param_in(weight, acc), b = param_in(bias, acc);
    at::Tensor partials = at::empty({static_cast<int64_t>(g.blocks), 2}, acc_options);
    at::Tensor c1 = at::empty({g.planes}, acc_options), c2 = at::empty({g.planes}, acc_options);
    const auto stream = current_stream();
    const T* dy = gc.const_data_ptr<T>();
    const T* x = xc.const_data_ptr<T>();
    T* d = dx.mutable_data_ptr<T>();
    const Acc s = static_cast<Acc>(slope);
    constexpr int V = Pack<T>::kSize;
    const bool vec = vector_path<T>(g.S, {dy, x, d});
    const auto grad_moments = vec ? grad_moments_kernel<T, V> : grad_moments_kernel<T, 1>;
    const auto grad_apply = vec ? grad_apply_kernel<T, V> : grad_apply_kernel<T, 1>;
    const auto grad_statistics = grad_statistics_kernel<Acc>;
    const Acc *pm = mean.const_data_ptr<Acc>(), *pr = rstd.const_data_ptr<Acc>();
    const Acc *pw = ptr_or_null<Acc>(w), *pb = ptr_or_null<Acc>(b);
    FUSIONSEG_LAUNCH(grad_moments, g.blocks, 0, stream, dy, x, pm, pr, pw, pb, partials.mutable_data_ptr<Acc>(), g.C,
                     g.S, g.chunks, s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    FUSIONSEG_LAUNCH(grad_statistics, blocks_for(g.C), 0, stream, partials.const_data_ptr<Acc>(), g.N, g.C, g.S,
                     g.chunks, c1.mutable_data_ptr<Acc>(), c2.mutable_data_ptr<Acc>(),
                     affine ? param_grads.mutable_data_ptr<double>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    FUSIONSEG_LAUNCH(grad_apply, g.blocks, 0, stream, dy, x, d, pm, pr, pw, pb, c1.const_data_ptr<Acc>(),
                     c2.const_data_ptr<Acc>(), g.C, g.S, g.chunks, s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!affine) return {dx, at::empty({0}, xc.options()), at::empty({0}, xc.options())};
  const at::ScalarType bias_type = bias.has_value() && bias->defined() ? bias->scalar_type() : weight->scalar_type();
  // copies (copy=true): for float64 parameters a plain .to() would return two views of one buffer,
  // and no output of an op may alias another
  return {dx, param_grads.select(1, 0).to(weight->scalar_type(), false, true),
          param_grads.select(1, 1).to(bias_type, false, true)};
}

void check_cuda_input(const at::Tensor& x) {
#ifndef FUSIONSEG_CUDA_EMULATION
  TORCH_CHECK(x.is_cuda(), "the cuda backend of instance_norm_leaky_relu needs CUDA tensors, got a tensor on ",
              x.device());
#endif
  (void)x;
}

std::tuple<at::Tensor, at::Tensor> run_forward(const at::Tensor& xc, at::Tensor& y,
                                               const std::optional<at::Tensor>& weight,
                                               const std::optional<at::Tensor>& bias, double eps, double slope) {
  std::tuple<at::Tensor, at::Tensor> stats;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "instance_norm_leaky_relu_cuda", [&] {
    stats = forward_into<scalar_t>(xc, y, weight, bias, eps, slope);
  });
  return stats;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                            const std::optional<at::Tensor>& bias, double eps,
                                                            double negative_slope) {
  check_instance_norm_act_args(x, weight, bias, eps);
  check_cuda_input(x);
  FUSIONSEG_DEVICE_GUARD(x);
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc, at::MemoryFormat::Contiguous);
  poison(y);
  if (x.numel() == 0) {
    const auto stats_options = x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
    at::Tensor mean = at::empty({x.size(0), x.size(1)}, stats_options);
    return {match_layout(y, x), mean, mean.clone()};
  }
  auto [mean, rstd] = run_forward(xc, y, weight, bias, eps, negative_slope);
  return {match_layout(y, x), mean, rstd};
}

// In place (inference: the conv output is not needed again), in the tensor's own dtype.
void forward_inplace_cuda(at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                          double eps, double negative_slope) {
  check_instance_norm_act_args(x, weight, bias, eps);
  check_cuda_input(x);
  FUSIONSEG_DEVICE_GUARD(x);
  if (x.numel() == 0) return;
  if (x.is_contiguous()) {
    run_forward(x, x, weight, bias, eps, negative_slope);
    return;
  }
  at::Tensor xc = x.contiguous();
  run_forward(xc, xc, weight, bias, eps, negative_slope);
  x.copy_(xc);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                             const at::Tensor& mean, const at::Tensor& rstd,
                                                             const std::optional<at::Tensor>& weight,
                                                             const std::optional<at::Tensor>& bias,
                                                             double negative_slope) {
  check_instance_norm_act_backward_args(grad_y, x);
  check_cuda_input(x);
  FUSIONSEG_DEVICE_GUARD(x);
  const at::Tensor xc = x.contiguous(), gc = grad_y.to(x.scalar_type()).contiguous();
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_leaky_relu_backward_cuda",
                                  [&] { result = backward_impl<scalar_t>(gc, xc, mean, rstd, weight, bias, negative_slope); });
  return {match_layout(std::get<0>(result), x), std::get<1>(result), std::get<2>(result)};
}

}  // namespace
}  // namespace fusionseg

TORCH_LIBRARY_IMPL(fusionseg, FUSIONSEG_KERNELS_DISPATCH_KEY, m) {
  m.impl("instance_norm_leaky_relu_forward", &fusionseg::forward_cuda);
  m.impl("instance_norm_leaky_relu_backward", &fusionseg::backward_cuda);
  m.impl("instance_norm_leaky_relu_", &fusionseg::forward_inplace_cuda);
}
