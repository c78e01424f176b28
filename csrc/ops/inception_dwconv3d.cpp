// The fusionseg operator library: schemas (defined once), argument checks, autocast
// rules and build information. Device kernels live in cpu/ and cuda/.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>
#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#else
#include <torch/version.h>
#endif

#include <cstdlib>
#include <sstream>
#include <string>

#include "fusionseg/inception_dwconv3d.h"

#ifdef FUSIONSEG_WITH_CUDA
namespace fusionseg {
std::string cuda_build_info_json();  // defined in cuda/, reports __CUDA_ARCH_LIST__
}
#endif

namespace fusionseg {

namespace {

const char* kGroupName[kNumConvGroups] = {"cube_weight", "w_weight", "h_weight", "d_weight"};
const char* kBiasName[kNumConvGroups] = {"cube_bias", "w_bias", "h_bias", "d_bias"};

}  // namespace

bool poison_outputs_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("FUSIONSEG_POISON_OUTPUTS");
    return v != nullptr && std::string(v) == "1";
  }();
  return enabled;
}

IdcConfig check_inception_dwconv3d_args(const at::Tensor& x,
                                        const at::Tensor& cube_weight,
                                        const std::optional<at::Tensor>& cube_bias,
                                        const at::Tensor& w_weight,
                                        const std::optional<at::Tensor>& w_bias,
                                        const at::Tensor& h_weight,
                                        const std::optional<at::Tensor>& h_bias,
                                        const at::Tensor& d_weight,
                                        const std::optional<at::Tensor>& d_bias) {
  TORCH_CHECK(x.dim() == 5, "inception_dwconv3d expects a 5-D input (N, C, D, H, W), got ",
              x.dim(), " dimensions");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "inception_dwconv3d expects a floating-point input (float32, float64, float16 or "
              "bfloat16), got ", x.scalar_type());
  const at::Tensor* weights[kNumConvGroups] = {&cube_weight, &w_weight, &h_weight, &d_weight};
  const std::optional<at::Tensor>* biases[kNumConvGroups] = {&cube_bias, &w_bias, &h_bias, &d_bias};

  IdcConfig cfg;
  cfg.channels = x.size(1);
  cfg.gc = cube_weight.dim() > 0 ? cube_weight.size(0) : 0;
  for (int g = 0; g < kNumConvGroups; ++g) {
    const at::Tensor& w = *weights[g];
    TORCH_CHECK(w.dim() == 5 && w.size(1) == 1,
                "inception_dwconv3d: ", kGroupName[g],
                " must have the shape of a depthwise Conv3d weight (gc, 1, kd, kh, kw), got ",
                w.sizes());
    TORCH_CHECK(w.size(0) == cfg.gc, "inception_dwconv3d: all four weights must have the same "
                "number of channels gc; cube_weight has ", cfg.gc, " but ", kGroupName[g], " has ",
                w.size(0));
    TORCH_CHECK(at::isFloatingType(w.scalar_type()), "inception_dwconv3d: ", kGroupName[g],
                " must be floating point, got ", w.scalar_type());
    TORCH_CHECK(w.device() == x.device(), "inception_dwconv3d: ", kGroupName[g], " is on ",
                w.device(), " but the input is on ", x.device());
    for (int a = 0; a < 3; ++a) {
      const int64_t k = w.size(2 + a);
      TORCH_CHECK(k >= 1 && k % 2 == 1, "inception_dwconv3d: kernel sizes must be odd (zero "
                  "padding k//2 keeps the shape), but ", kGroupName[g], " has kernel ",
                  w.sizes().slice(2));
      cfg.kernel[g][a] = k;
    }
    const auto& b = *biases[g];
    if (b.has_value() && b->defined()) {
      TORCH_CHECK(b->dim() == 1 && b->size(0) == cfg.gc, "inception_dwconv3d: ", kBiasName[g],
                  " must have shape (", cfg.gc, "), got ", b->sizes());
      TORCH_CHECK(b->device() == x.device(), "inception_dwconv3d: ", kBiasName[g], " is on ",
                  b->device(), " but the input is on ", x.device());
      TORCH_CHECK(at::isFloatingType(b->scalar_type()), "inception_dwconv3d: ", kBiasName[g],
                  " must be floating point, got ", b->scalar_type());
    }
  }
  TORCH_CHECK(4 * cfg.gc <= cfg.channels, "inception_dwconv3d: the input has ", cfg.channels,
              " channels, fewer than the 4 * gc = ", 4 * cfg.gc, " the weights need");
  cfg.identity = cfg.channels - 4 * cfg.gc;
  return cfg;
}

namespace {

std::string build_info_json() {
  std::ostringstream s;
  s << "{\"torch_version\": \"" << TORCH_VERSION_MAJOR << "." << TORCH_VERSION_MINOR << "."
    << TORCH_VERSION_PATCH << "\"";
#ifdef _OPENMP
  s << ", \"openmp\": " << _OPENMP;
#else
  s << ", \"openmp\": null";
#endif
#ifdef FUSIONSEG_CXX_FLAGS
  s << ", \"cxx_flags\": \"" << FUSIONSEG_CXX_FLAGS << "\"";
#endif
#if defined(__GNUC__) && !defined(__clang__)
  s << ", \"compiler\": \"gcc " << __GNUC__ << "." << __GNUC_MINOR__ << "\"";
#elif defined(__clang__)
  s << ", \"compiler\": \"clang " << __clang_major__ << "." << __clang_minor__ << "\"";
#endif
#ifdef FUSIONSEG_WITH_CUDA
  s << ", \"cuda\": " << cuda_build_info_json();
#else
  s << ", \"cuda\": null";
#endif
  s << "}";
  return s.str();
}

// Under autocast the op runs in the autocast dtype: x is cast (weights are cast inside the
// op), then the op is redispatched below the autocast key.
template <c10::DispatchKey AutocastKey, c10::DeviceType Device>
at::Tensor forward_autocast(const at::Tensor& x, const at::Tensor& cube_weight,
                            const std::optional<at::Tensor>& cube_bias, const at::Tensor& w_weight,
                            const std::optional<at::Tensor>& w_bias, const at::Tensor& h_weight,
                            const std::optional<at::Tensor>& h_bias, const at::Tensor& d_weight,
                            const std::optional<at::Tensor>& d_bias) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(AutocastKey);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fusionseg::inception_dwconv3d_forward", "")
                       .typed<decltype(forward_autocast<AutocastKey, Device>)>();
  const auto dtype = at::autocast::get_autocast_dtype(Device);
  const at::Tensor xc = at::isFloatingType(x.scalar_type()) ? x.to(dtype) : x;
  return op.call(xc, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias, d_weight, d_bias);
}

}  // namespace

}  // namespace fusionseg

TORCH_LIBRARY(fusionseg, m) {
  m.def(
      "inception_dwconv3d_forward(Tensor x, Tensor cube_weight, Tensor? cube_bias, "
      "Tensor w_weight, Tensor? w_bias, Tensor h_weight, Tensor? h_bias, Tensor d_weight, "
      "Tensor? d_bias) -> Tensor");
  // Returns (grad_x, grad of the four weights, grad of the four biases); the weight and
  // bias gradients come in the weights' dtype.
  m.def(
      "inception_dwconv3d_backward(Tensor grad_y, Tensor x, Tensor cube_weight, "
      "Tensor w_weight, Tensor h_weight, Tensor d_weight) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("build_info() -> str", &fusionseg::build_info_json);
}

TORCH_LIBRARY_IMPL(fusionseg, AutocastCUDA, m) {
  m.impl("inception_dwconv3d_forward",
         &fusionseg::forward_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(fusionseg, AutocastCPU, m) {
  m.impl("inception_dwconv3d_forward",
         &fusionseg::forward_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}
