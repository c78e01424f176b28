// Fused CPU kernels for fusionseg::instance_norm_leaky_relu_{forward,backward}.
//
// InstanceNorm (optionally affine) followed by LeakyReLU, in two passes over memory each way
// instead of the five of F.instance_norm + F.leaky_relu:
//   forward   pass 1: per-(n, c) sums of x - shift and (x - shift)^2 (shift = the plane's first
//                     value, so the variance does not cancel); pass 2: y = lrelu(x * a + b) with
//                     a = rstd * weight, b = bias - mean * a.
//   backward  pass 1: per-(n, c) sums of dz and dz * xhat, where dz = dy * lrelu'(z), recomputing
//                     z from x; pass 2: dx = rstd * weight * (dz - mean(dz) - xhat * mean(dz xhat)).
// NCDHW with planes that share evenly among the threads: each thread takes whole planes and runs both
// passes on one plane before the next, so the second pass reads what the first has just brought
// into cache. Otherwise work is cut into tasks of at most kTaskElements elements of one (n, c)
// plane (NCDHW) or of one sample's rows (NDHWC), so that a few large planes still use every
// thread. Either way the partial sums are kept per chunk of kTaskElements in double and reduced
// in chunk order: deterministic for any thread count and the same in both schemes.
// float16 and bfloat16 are computed in float32. The hot loops are compiled for AVX-512, AVX2
// and baseline x86-64 and picked at load time (GCC target_clones).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fusionseg/inception_dwconv3d.h"
#include "fusionseg/instance_norm_act.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FUSIONSEG_NORM_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "avx2", "default")))
#else
#define FUSIONSEG_NORM_MULTIVERSION
#endif
#define FUSIONSEG_NORM_INLINE inline __attribute__((always_inline))

namespace fusionseg {
namespace {

constexpr int64_t kTaskElements = 1 << 16;
// Partial sums are accumulated in T over at most this many elements (vector lanes), then in double.
constexpr int64_t kBlock = 1024;

// ---------------------------------------------------------------------------------------------
// The loops, written for the vectoriser: __restrict pointers, `omp simd` (the build passes
// -fopenmp) so that the compare-and-select of LeakyReLU is if-converted and the block sums use
// vector accumulators. `Contig` versions run over n contiguous elements of one plane; `Rows`
// versions over `rows` rows of C channels (NDHWC), with per-channel coefficients.

// LeakyReLU's factor at z: 1 or the slope (a multiplication by 1 is exact)
template <typename T>
FUSIONSEG_NORM_INLINE T lrelu_factor(T z, T slope) {
  return z > T(0) ? T(1) : slope;
}

// (sum of first, sum of second) over i < n of terms(i) -> (first, second): T accumulators (vector
// lanes) within a block of kBlock elements, double across blocks
template <typename T, typename Terms>
FUSIONSEG_NORM_INLINE void block_sums(int64_t n, Terms terms, double& sum_first, double& sum_second) {
  double s = 0, q = 0;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    T bs = 0, bq = 0;
#pragma omp simd reduction(+ : bs, bq)
    for (int64_t i = start; i < end; ++i) {
      T first, second;
      terms(i, first, second);
      bs += first;
      bq += second;
    }
    s += bs;
    q += bq;
  }
  sum_first += s;
  sum_second += q;
}

// sum(x - shift), sum((x - shift)^2) over n elements
template <typename T>
FUSIONSEG_NORM_INLINE void moments_contig(const T* __restrict x, int64_t n, T shift, double& sum, double& sq) {
  block_sums<T>(n, [=](int64_t i, T& v, T& v2) {
    v = x[i] - shift;
    v2 = v * v;
  }, sum, sq);
}

// y = lrelu(x * a + b); y may be x (the in-place op), hence no __restrict
template <typename T>
FUSIONSEG_NORM_INLINE void apply_contig(const T* x, T* y, int64_t n, T a, T b, T slope) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T z = x[i] * a + b;
    y[i] = z * lrelu_factor(z, slope);
  }
}

// sum(dz), sum(dz * xhat) with xhat = (x - mean) * rstd, z = xhat * w + bias, dz = dy * lrelu'(z)
template <typename T>
FUSIONSEG_NORM_INLINE void grad_moments_contig(const T* __restrict dy, const T* __restrict x, int64_t n, T mean,
                                               T rstd, T w, T bias, T slope, double& sum_dz, double& sum_dz_xhat) {
  block_sums<T>(n, [=](int64_t i, T& dz, T& dz_xhat) {
    const T xhat = (x[i] - mean) * rstd;
    dz = dy[i] * lrelu_factor(xhat * w + bias, slope);
    dz_xhat = dz * xhat;
  }, sum_dz, sum_dz_xhat);
}

// dx = k * (dz - c1 - xhat * c2), k = rstd * w, c1 = mean(dz), c2 = mean(dz * xhat)
template <typename T>
FUSIONSEG_NORM_INLINE void grad_apply_contig(const T* __restrict dy, const T* __restrict x, T* __restrict dx,
                                             int64_t n, T mean, T rstd, T w, T bias, T slope, T c1, T c2) {
  const T k = rstd * w;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T xhat = (x[i] - mean) * rstd;
    const T dz = dy[i] * lrelu_factor(xhat * w + bias, slope);
    dx[i] = k * (dz - c1 - xhat * c2);
  }
}

// Row versions: x is `rows` x C; per-channel arrays of length C.
template <typename T>
FUSIONSEG_NORM_INLINE void moments_rows(const T* __restrict x, int64_t rows, int64_t C, const T* __restrict shift,
                                        double* __restrict sum, double* __restrict sq, T* __restrict acc_s,
                                        T* __restrict acc_q) {
  for (int64_t start = 0; start < rows; start += kBlock) {
    const int64_t end = std::min(rows, start + kBlock);
    std::fill(acc_s, acc_s + C, T(0));
    std::fill(acc_q, acc_q + C, T(0));
    for (int64_t r = start; r < end; ++r) {
      const T* __restrict row = x + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T v = row[c] - shift[c];
        acc_s[c] += v;
        acc_q[c] += v * v;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      sum[c] += acc_s[c];
      sq[c] += acc_q[c];
    }
  }
}

template <typename T>
FUSIONSEG_NORM_INLINE void apply_rows(const T* x, T* y, int64_t rows, int64_t C, const T* __restrict a,
                                      const T* __restrict b, T slope) {
  for (int64_t r = 0; r < rows; ++r) {  // y may be x
    const T* xr = x + r * C;
    T* yr = y + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const T z = xr[c] * a[c] + b[c];
      yr[c] = z * lrelu_factor(z, slope);
    }
  }
}

template <typename T>
FUSIONSEG_NORM_INLINE void grad_moments_rows(const T* __restrict dy, const T* __restrict x, int64_t rows, int64_t C,
                                             const T* __restrict mean, const T* __restrict rstd,
                                             const T* __restrict w, const T* __restrict bias, T slope,
                                             double* __restrict sum_dz, double* __restrict sum_dz_xhat,
                                             T* __restrict acc_s, T* __restrict acc_q) {
  for (int64_t start = 0; start < rows; start += kBlock) {
    const int64_t end = std::min(rows, start + kBlock);
    std::fill(acc_s, acc_s + C, T(0));
    std::fill(acc_q, acc_q + C, T(0));
    for (int64_t r = start; r < end; ++r) {
      const T* __restrict xr = x + r * C;
      const T* __restrict gr = dy + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T xhat = (xr[c] - mean[c]) * rstd[c];
        const T dz = gr[c] * lrelu_factor(xhat * w[c] + bias[c], slope);
        acc_s[c] += dz;
        acc_q[c] += dz * xhat;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      sum_dz[c] += acc_s[c];
      sum_dz_xhat[c] += acc_q[c];
    }
  }
}

template <typename T>
FUSIONSEG_NORM_INLINE void grad_apply_rows(const T* __restrict dy, const T* __restrict x, T* __restrict dx,
                                           int64_t rows, int64_t C, const T* __restrict mean,
                                           const T* __restrict rstd, const T* __restrict w,
                                           const T* __restrict bias, T slope, const T* __restrict c1,
                                           const T* __restrict c2) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict xr = x + r * C;
    const T* __restrict gr = dy + r * C;
    T* __restrict dr = dx + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const T xhat = (xr[c] - mean[c]) * rstd[c];
      const T dz = gr[c] * lrelu_factor(xhat * w[c] + bias[c], slope);
      dr[c] = rstd[c] * w[c] * (dz - c1[c] - xhat * c2[c]);
    }
  }
}

// Multiversioned entry points (target_clones needs plain functions).
#define FUSIONSEG_NORM_VERSIONS(T, SUFFIX)                                                                    \
  FUSIONSEG_NORM_MULTIVERSION void moments_contig_##SUFFIX(const T* x, int64_t n, T shift, double& s,         \
                                                            double& q) {                                      \
    moments_contig<T>(x, n, shift, s, q);                                                                     \
  }                                                                                                           \
  FUSIONSEG_NORM_MULTIVERSION void apply_contig_##SUFFIX(const T* x, T* y, int64_t n, T a, T b, T slope) {    \
    apply_contig<T>(x, y, n, a, b, slope);                                                                    \
  }                                                                                                           \
  FUSIONSEG_NORM_MULTIVERSION void grad_moments_contig_##SUFFIX(const T* dy, const T* x, int64_t n, T mean,   \
                                                                 T rstd, T w, T bias, T slope, double& s,     \
                                                                 double& q) {                                 \
    grad_moments_contig<T>(dy, x, n, mean, rstd, w, bias, slope, s, q);                                       \
  }                                                                                                           \
  FUSIONSEG_NORM_MULTIVERSION void grad_apply_contig_##SUFFIX(const T* dy, const T* x, T* dx, int64_t n,      \
                                                               T mean, T rstd, T w, T bias, T slope, T c1,    \
                                                               T c2) {                                        \
    grad_apply_contig<T>(dy, x, dx, n, mean, rstd, w, bias, slope, c1, c2);                                   \
  }                                                                                                           \
  FUSIONSEG_NORM_MULTIVERSION void moments_rows_##SUFFIX(const T* x, int64_t rows, int64_t C, const T* shift, \
                                                          double* s, double* q, T* as, T* aq) {               \
    moments_rows<T>(x, rows, C, shift, s, q, as, aq);                                                         \
  }                                                                                                           \
  FUSIONSEG_NORM_MULTIVERSION void apply_rows_##SUFFIX(const T* x, T* y, int64_t rows, int64_t C, const T* a, \
                                                        const T* b, T slope) {                                \
    apply_rows<T>(x, y, rows, C, a, b, slope);                                                                \
  }                                                                                                           \
  FUSIONSEG_NORM_MULTIVERSION void grad_moments_rows_##SUFFIX(const T* dy, const T* x, int64_t rows,          \
                                                               int64_t C, const T* mean, const T* rstd,       \
                                                               const T* w, const T* bias, T slope, double* s, \
                                                               double* q, T* as, T* aq) {                     \
    grad_moments_rows<T>(dy, x, rows, C, mean, rstd, w, bias, slope, s, q, as, aq);                           \
  }                                                                                                           \
  FUSIONSEG_NORM_MULTIVERSION void grad_apply_rows_##SUFFIX(const T* dy, const T* x, T* dx, int64_t rows,     \
                                                             int64_t C, const T* mean, const T* rstd,         \
                                                             const T* w, const T* bias, T slope, const T* c1, \
                                                             const T* c2) {                                   \
    grad_apply_rows<T>(dy, x, dx, rows, C, mean, rstd, w, bias, slope, c1, c2);                               \
  }

FUSIONSEG_NORM_VERSIONS(float, f32)
FUSIONSEG_NORM_VERSIONS(double, f64)

// Overloads so the drivers below can be templates.
#define FUSIONSEG_NORM_DISPATCH(T, SUFFIX)                                                                    \
  inline void moments_contig_v(const T* x, int64_t n, T shift, double& s, double& q) {                        \
    moments_contig_##SUFFIX(x, n, shift, s, q);                                                               \
  }                                                                                                           \
  inline void apply_contig_v(const T* x, T* y, int64_t n, T a, T b, T slope) {                                \
    apply_contig_##SUFFIX(x, y, n, a, b, slope);                                                              \
  }                                                                                                           \
  inline void grad_moments_contig_v(const T* dy, const T* x, int64_t n, T m, T r, T w, T b, T sl, double& s,  \
                                    double& q) {                                                              \
    grad_moments_contig_##SUFFIX(dy, x, n, m, r, w, b, sl, s, q);                                             \
  }                                                                                                           \
  inline void grad_apply_contig_v(const T* dy, const T* x, T* dx, int64_t n, T m, T r, T w, T b, T sl, T c1,  \
                                  T c2) {                                                                     \
    grad_apply_contig_##SUFFIX(dy, x, dx, n, m, r, w, b, sl, c1, c2);                                         \
  }                                                                                                           \
  inline void moments_rows_v(const T* x, int64_t rows, int64_t C, const T* sh, double* s, double* q, T* as,  \
                             T* aq) {                                                                         \
    moments_rows_##SUFFIX(x, rows, C, sh, s, q, as, aq);                                                      \
  }                                                                                                           \
  inline void apply_rows_v(const T* x, T* y, int64_t rows, int64_t C, const T* a, const T* b, T sl) {         \
    apply_rows_##SUFFIX(x, y, rows, C, a, b, sl);                                                             \
  }                                                                                                           \
  inline void grad_moments_rows_v(const T* dy, const T* x, int64_t rows, int64_t C, const T* m, const T* r,  \
                                  const T* w, const T* b, T sl, double* s, double* q, T* as, T* aq) {         \
    grad_moments_rows_##SUFFIX(dy, x, rows, C, m, r, w, b, sl, s, q, as, aq);                                 \
  }                                                                                                           \
  inline void grad_apply_rows_v(const T* dy, const T* x, T* dx, int64_t rows, int64_t C, const T* m,         \
                                const T* r, const T* w, const T* b, T sl, const T* c1, const T* c2) {         \
    grad_apply_rows_##SUFFIX(dy, x, dx, rows, C, m, r, w, b, sl, c1, c2);                                     \
  }

FUSIONSEG_NORM_DISPATCH(float, f32)
FUSIONSEG_NORM_DISPATCH(double, f64)

// ---------------------------------------------------------------------------------------------
// Layout: NCDHW (contiguous) or NDHWC (channels_last_3d); anything else is made contiguous.

bool is_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast3d);
}

at::Tensor in_layout(const at::Tensor& t, at::ScalarType ct, bool channels_last) {
  return t.to(ct).contiguous(channels_last ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous);
}

// Whether each thread gets whole (n, c) planes (the plane-major scheme): when they share evenly
// (within a quarter); otherwise planes are cut into tasks of kTaskElements so that a few large
// planes still keep every thread busy.
bool planes_per_thread(int64_t planes) {
  const int64_t threads = at::get_num_threads();
  return planes % threads == 0 || planes >= 4 * threads;
}

// Per-(n, c) affine coefficients in T: weight (1 without), bias (0 without).
template <typename T>
std::vector<T> per_channel(const std::optional<at::Tensor>& p, int64_t C, T fill) {
  std::vector<T> out(C, fill);
  if (p.has_value() && p->defined()) {
    const at::Tensor v = p->to(c10::CppTypeToScalarType<T>::value).contiguous();
    std::copy(v.data_ptr<T>(), v.data_ptr<T>() + C, out.begin());
  }
  return out;
}

// y: xc's shape and layout, or xc itself (in place)
template <typename T>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& xc, at::Tensor& y, bool cl,
                                                const std::optional<at::Tensor>& weight,
                                                const std::optional<at::Tensor>& bias, double eps, double slope_d) {
  const int64_t N = xc.size(0), C = xc.size(1), S = xc.size(2) * xc.size(3) * xc.size(4);
  const T slope = static_cast<T>(slope_d);
  const at::ScalarType st = c10::CppTypeToScalarType<T>::value;
  at::Tensor mean = at::empty({N, C}, xc.options().dtype(st));
  at::Tensor rstd = at::empty({N, C}, xc.options().dtype(st));
  if (xc.numel() == 0) return {mean, rstd};
  const T* x = xc.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  T* mp = mean.data_ptr<T>();
  T* rp = rstd.data_ptr<T>();
  const std::vector<T> w = per_channel<T>(weight, C, T(1)), b = per_channel<T>(bias, C, T(0));
  if (!cl) {
    const int64_t chunks = (S + kTaskElements - 1) / kTaskElements, tasks = N * C * chunks;
    // mean and rstd of a plane from its chunks' sums, added in chunk order
    auto finish_plane = [&](int64_t plane, const double* chunk_sum, const double* chunk_sq) {
      double s = 0, q = 0;
      for (int64_t k = 0; k < chunks; ++k) {
        s += chunk_sum[k];
        q += chunk_sq[k];
      }
      const double m = s / S, var = std::max(q / S - m * m, 0.0);
      mp[plane] = static_cast<T>(static_cast<double>(x[plane * S]) + m);
      rp[plane] = static_cast<T>(1.0 / std::sqrt(var + eps));
    };
    if (planes_per_thread(N * C)) {
      // Plane-major: a thread's second pass re-reads the plane its first pass has just read, from
      // cache (a 96x128x128 float plane is 6 MB), so memory moves |x| fewer bytes. Same per-chunk
      // sums added in the same order as below: the results do not depend on the scheme.
      at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
        std::vector<double> psum(chunks), psq(chunks);
        for (int64_t plane = begin; plane < end; ++plane) {
          const T* px = x + plane * S;
          for (int64_t k = 0; k < chunks; ++k) {
            psum[k] = psq[k] = 0.0;
            moments_contig_v(px + k * kTaskElements, std::min(kTaskElements, S - k * kTaskElements), px[0], psum[k],
                             psq[k]);
          }
          finish_plane(plane, psum.data(), psq.data());
          const int64_t c = plane % C;
          const T a = rp[plane] * w[c], bb = b[c] - mp[plane] * a;
          for (int64_t k = 0; k < chunks; ++k) {
            const int64_t start = k * kTaskElements;
            apply_contig_v(px + start, yp + plane * S + start, std::min(kTaskElements, S - start), a, bb, slope);
          }
        }
      });
      return {mean, rstd};
    }
    std::vector<double> psum(tasks, 0.0), psq(tasks, 0.0);
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t plane = t / chunks, k = t % chunks, start = k * kTaskElements;
        const T* px = x + plane * S;
        moments_contig_v(px + start, std::min(kTaskElements, S - start), px[0], psum[t], psq[t]);
      }
    });
    for (int64_t plane = 0; plane < N * C; ++plane)
      finish_plane(plane, psum.data() + plane * chunks, psq.data() + plane * chunks);
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t plane = t / chunks, k = t % chunks, start = k * kTaskElements, c = plane % C;
        const T a = rp[plane] * w[c], bb = b[c] - mp[plane] * a;
        apply_contig_v(x + plane * S + start, yp + plane * S + start, std::min(kTaskElements, S - start), a, bb,
                       slope);
      }
    });
    return {mean, rstd};
  }
  // NDHWC: tasks are blocks of rows of one sample
  const int64_t rows_per_task = std::max<int64_t>(1, kTaskElements / C);
  const int64_t chunks = (S + rows_per_task - 1) / rows_per_task, tasks = N * chunks;
  std::vector<double> psum(tasks * C, 0.0), psq(tasks * C, 0.0);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> as(C), aq(C);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / chunks, k = t % chunks, r0 = k * rows_per_task;
      const T* px = x + n * S * C;
      moments_rows_v(px + r0 * C, std::min(rows_per_task, S - r0), C, px, psum.data() + t * C,
                     psq.data() + t * C, as.data(), aq.data());
    }
  });
  std::vector<T> a(N * C), bb(N * C);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      double s = 0, q = 0;
      for (int64_t k = 0; k < chunks; ++k) {
        s += psum[(n * chunks + k) * C + c];
        q += psq[(n * chunks + k) * C + c];
      }
      const double m = s / S, var = std::max(q / S - m * m, 0.0);
      const int64_t i = n * C + c;
      mp[i] = static_cast<T>(static_cast<double>(x[n * S * C + c]) + m);
      rp[i] = static_cast<T>(1.0 / std::sqrt(var + eps));
      a[i] = rp[i] * w[c];
      bb[i] = b[c] - mp[i] * a[i];
    }
  }
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / chunks, k = t % chunks, r0 = k * rows_per_task, off = (n * S + r0) * C;
      apply_rows_v(x + off, yp + off, std::min(rows_per_task, S - r0), C, a.data() + n * C, bb.data() + n * C,
                   slope);
    }
  });
  return {mean, rstd};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(const at::Tensor& gc, const at::Tensor& xc, bool cl,
                                                             const at::Tensor& mean_t, const at::Tensor& rstd_t,
                                                             const std::optional<at::Tensor>& weight,
                                                             const std::optional<at::Tensor>& bias,
                                                             double slope_d) {
  const int64_t N = xc.size(0), C = xc.size(1), S = xc.size(2) * xc.size(3) * xc.size(4);
  const T slope = static_cast<T>(slope_d);
  at::Tensor dx = at::empty_like(xc);
  const at::Tensor mean = mean_t.to(c10::CppTypeToScalarType<T>::value).contiguous();
  const at::Tensor rstd = rstd_t.to(c10::CppTypeToScalarType<T>::value).contiguous();
  std::vector<double> sum_dz(N * C, 0.0), sum_dzx(N * C, 0.0);
  if (xc.numel() > 0) {
    const T* x = xc.data_ptr<T>();
    const T* g = gc.data_ptr<T>();
    T* d = dx.data_ptr<T>();
    const T* mp = mean.data_ptr<T>();
    const T* rp = rstd.data_ptr<T>();
    const std::vector<T> w = per_channel<T>(weight, C, T(1)), b = per_channel<T>(bias, C, T(0));
    if (!cl && planes_per_thread(N * C)) {
      // Plane-major, as the forward: the second pass re-reads dy and x from cache.
      const int64_t chunks = (S + kTaskElements - 1) / kTaskElements;
      at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          const int64_t c = plane % C;
          for (int64_t k = 0; k < chunks; ++k) {
            const int64_t off = plane * S + k * kTaskElements;
            double ps = 0, pq = 0;
            grad_moments_contig_v(g + off, x + off, std::min(kTaskElements, S - k * kTaskElements), mp[plane],
                                  rp[plane], w[c], b[c], slope, ps, pq);
            sum_dz[plane] += ps;
            sum_dzx[plane] += pq;
          }
          const T c1 = static_cast<T>(sum_dz[plane] / S), c2 = static_cast<T>(sum_dzx[plane] / S);
          for (int64_t k = 0; k < chunks; ++k) {
            const int64_t off = plane * S + k * kTaskElements;
            grad_apply_contig_v(g + off, x + off, d + off, std::min(kTaskElements, S - k * kTaskElements), mp[plane],
                                rp[plane], w[c], b[c], slope, c1, c2);
          }
        }
      });
    } else if (!cl) {
      const int64_t chunks = (S + kTaskElements - 1) / kTaskElements, tasks = N * C * chunks;
      std::vector<double> ps(tasks, 0.0), pq(tasks, 0.0);
      at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t plane = t / chunks, k = t % chunks, start = k * kTaskElements, c = plane % C;
          const int64_t off = plane * S + start;
          grad_moments_contig_v(g + off, x + off, std::min(kTaskElements, S - start), mp[plane], rp[plane], w[c],
                                b[c], slope, ps[t], pq[t]);
        }
      });
      for (int64_t plane = 0; plane < N * C; ++plane) {
        for (int64_t k = 0; k < chunks; ++k) {
          sum_dz[plane] += ps[plane * chunks + k];
          sum_dzx[plane] += pq[plane * chunks + k];
        }
      }
      at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t plane = t / chunks, k = t % chunks, start = k * kTaskElements, c = plane % C;
          const int64_t off = plane * S + start;
          grad_apply_contig_v(g + off, x + off, d + off, std::min(kTaskElements, S - start), mp[plane], rp[plane],
                              w[c], b[c], slope, static_cast<T>(sum_dz[plane] / S),
                              static_cast<T>(sum_dzx[plane] / S));
        }
      });
    } else {
      const int64_t rows_per_task = std::max<int64_t>(1, kTaskElements / C);
      const int64_t chunks = (S + rows_per_task - 1) / rows_per_task, tasks = N * chunks;
      std::vector<double> ps(tasks * C, 0.0), pq(tasks * C, 0.0);
      at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> as(C), aq(C);
        for (int64_t t = begin; t < end; ++t) {
          const int64_t n = t / chunks, k = t % chunks, r0 = k * rows_per_task, off = (n * S + r0) * C;
          grad_moments_rows_v(g + off, x + off, std::min(rows_per_task, S - r0), C, mp + n * C, rp + n * C,
                              w.data(), b.data(), slope, ps.data() + t * C, pq.data() + t * C, as.data(), aq.data());
        }
      });
      std::vector<T> c1(N * C), c2(N * C);
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t k = 0; k < chunks; ++k) {
          for (int64_t c = 0; c < C; ++c) {
            sum_dz[n * C + c] += ps[(n * chunks + k) * C + c];
            sum_dzx[n * C + c] += pq[(n * chunks + k) * C + c];
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          c1[n * C + c] = static_cast<T>(sum_dz[n * C + c] / S);
          c2[n * C + c] = static_cast<T>(sum_dzx[n * C + c] / S);
        }
      }
      at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t n = t / chunks, k = t % chunks, r0 = k * rows_per_task, off = (n * S + r0) * C;
          grad_apply_rows_v(g + off, x + off, d + off, std::min(rows_per_task, S - r0), C, mp + n * C, rp + n * C,
                            w.data(), b.data(), slope, c1.data() + n * C, c2.data() + n * C);
        }
      });
    }
  }
  // dweight[c] = sum_n sum(dz * xhat), dbias[c] = sum_n sum(dz), in a fixed order
  at::Tensor gw, gb;
  if (weight.has_value() && weight->defined()) {
    at::Tensor sw = at::zeros({C}, at::kDouble), sb = at::zeros({C}, at::kDouble);
    double* pw = sw.data_ptr<double>();
    double* pb = sb.data_ptr<double>();
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        pw[c] += sum_dzx[n * C + c];
        pb[c] += sum_dz[n * C + c];
      }
    }
    gw = sw.to(weight->scalar_type());
    gb = sb.to(bias.has_value() && bias->defined() ? bias->scalar_type() : weight->scalar_type());
  } else {
    gw = at::empty({0}, xc.options());
    gb = at::empty({0}, xc.options());
  }
  return {dx, gw, gb};
}

std::tuple<at::Tensor, at::Tensor> run_forward(const at::Tensor& xc, at::Tensor& y, bool cl,
                                               const std::optional<at::Tensor>& weight,
                                               const std::optional<at::Tensor>& bias, double eps, double slope) {
  return xc.scalar_type() == at::kDouble ? forward_impl<double>(xc, y, cl, weight, bias, eps, slope)
                                         : forward_impl<float>(xc, y, cl, weight, bias, eps, slope);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                           const std::optional<at::Tensor>& bias, double eps,
                                                           double negative_slope) {
  check_instance_norm_act_args(x, weight, bias, eps);
  const bool cl = is_channels_last(x);
  const at::ScalarType ct = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xc = in_layout(x, ct, cl);
  at::Tensor y = at::empty_like(xc);
  auto [mean, rstd] = run_forward(xc, y, cl, weight, bias, eps, negative_slope);
  return {match_layout(y, x), mean, rstd};
}

// In place (inference: the conv output is not needed again): no output allocation, whose first
// touch (page faults) costs more than the two passes themselves on a fresh buffer.
void forward_inplace_cpu(at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                         double eps, double negative_slope) {
  check_instance_norm_act_args(x, weight, bias, eps);
  const bool cl = is_channels_last(x);
  const at::ScalarType ct = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (x.scalar_type() == ct && (cl || x.is_contiguous())) {
    run_forward(x, x, cl, weight, bias, eps, negative_slope);
    return;
  }
  const at::Tensor xc = in_layout(x, ct, cl);  // float16/bfloat16 or another layout: a float32 copy
  at::Tensor y = at::empty_like(xc);
  run_forward(xc, y, cl, weight, bias, eps, negative_slope);
  x.copy_(y);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                            const at::Tensor& mean, const at::Tensor& rstd,
                                                            const std::optional<at::Tensor>& weight,
                                                            const std::optional<at::Tensor>& bias,
                                                            double negative_slope) {
  check_instance_norm_act_backward_args(grad_y, x);
  const bool cl = is_channels_last(x);
  const at::ScalarType ct = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xc = in_layout(x, ct, cl), gc = in_layout(grad_y, ct, cl);
  auto result = ct == at::kDouble ? backward_impl<double>(gc, xc, cl, mean, rstd, weight, bias, negative_slope)
                                  : backward_impl<float>(gc, xc, cl, mean, rstd, weight, bias, negative_slope);
  at::Tensor dx = match_layout(std::get<0>(result), x);
  return {dx, std::get<1>(result), std::get<2>(result)};
}

}  // namespace
}  // namespace fusionseg

TORCH_LIBRARY_IMPL(fusionseg, CPU, m) {
  m.impl("instance_norm_leaky_relu_forward", &fusionseg::forward_cpu);
  m.impl("instance_norm_leaky_relu_backward", &fusionseg::backward_cpu);
  m.impl("instance_norm_leaky_relu_", &fusionseg::forward_inplace_cpu);
}
