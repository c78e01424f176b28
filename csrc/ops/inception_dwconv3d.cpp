// The fusionseg operator library: schemas (defined once), argument checks and build
// information. Device kernels live in cpu/ and cuda/.
#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <torch/library.h>
#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#else
#include <torch/version.h>
#endif

#include <cstdlib>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

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

void poison(at::Tensor& t) {
  if (poison_outputs_enabled()) t.fill_(std::numeric_limits<double>::quiet_NaN());
}

// The rule, for both backends: the output is laid out exactly as at::empty_like(like) (memory
// format Preserve) would be, because that is what the fake/meta kernel
// (fusionseg_kernels/ops/inception_dwconv3d/registration.py) returns and torch.compile, opcheck
// and the tests compare real strides against it. empty_like keeps like's strides when like is
// non-overlapping and dense (contiguous, channels_last_3d, any permuted dense layout); for
// other strided tensors (slices, expanded views) it infers dense strides in like's dimension
// order (at::infer_dense_strides; aten/src/ATen/native/TensorFactories.cpp). The result is
// returned as is only when its dtype and its strides are already exactly those; otherwise it is
// copied (and converted, e.g. the CPU kernels compute float16/bfloat16 in float) into
// empty_like(like). Comparing strides, rather than asking like.is_contiguous() (the old CPU
// rule) or like.suggest_memory_format() (the old CUDA rule), is exact also for size-1 and empty
// dimensions and for non-dense inputs whose dimension order is neither contiguous nor
// channels-last, and it still skips the copy for a sliced contiguous-order input.
at::Tensor match_layout(const at::Tensor& contiguous_result, const at::Tensor& like) {
  TORCH_INTERNAL_ASSERT(contiguous_result.sizes() == like.sizes() &&
                        contiguous_result.device() == like.device());
  bool same = false;
  if (contiguous_result.scalar_type() == like.scalar_type()) {
    if (like.is_non_overlapping_and_dense()) {
      same = contiguous_result.strides() == like.strides();
    } else {
      const std::vector<int64_t> dense = at::infer_dense_strides(like.sizes(), like.strides());
      same = contiguous_result.strides() == at::IntArrayRef(dense);
    }
  }
  if (same) return contiguous_result;
  at::Tensor out = at::empty_like(like);
  out.copy_(contiguous_result);
  return out;
}

// The four dtypes the op computes in.
bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// A dtype as Python spells it ("torch.float32"), so messages read the same from every backend.
std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kBool: return "torch.bool";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kComplexHalf: return "torch.complex32";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    case at::kFloat8_e4m3fn: return "torch.float8_e4m3fn";
    case at::kFloat8_e5m2: return "torch.float8_e5m2";
    case at::kFloat8_e4m3fnuz: return "torch.float8_e4m3fnuz";
    case at::kFloat8_e5m2fnuz: return "torch.float8_e5m2fnuz";
    default: return std::string("torch.") + c10::toString(t);
  }
}

// The checks and sentences of fusionseg_kernels/ops/inception_dwconv3d/validation.py, in the
// same order, as ValueError (TORCH_CHECK_VALUE) or TypeError (TORCH_CHECK_TYPE).
IdcConfig check_inception_dwconv3d_args(const at::Tensor& x,
                                        const at::Tensor& cube_weight,
                                        const std::optional<at::Tensor>& cube_bias,
                                        const at::Tensor& w_weight,
                                        const std::optional<at::Tensor>& w_bias,
                                        const at::Tensor& h_weight,
                                        const std::optional<at::Tensor>& h_bias,
                                        const at::Tensor& d_weight,
                                        const std::optional<at::Tensor>& d_bias) {
  static const char* kFloats = "float32, float64, float16 or bfloat16";
  TORCH_CHECK_VALUE(x.dim() == 5, "inception_dwconv3d expects a 5-D input (N, C, D, H, W), got shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(is_supported_float(x.scalar_type()), "inception_dwconv3d expects a ", kFloats,
                   " input, got ", dtype_name(x.scalar_type()));
  const at::Tensor* weights[kNumConvGroups] = {&cube_weight, &w_weight, &h_weight, &d_weight};
  const std::optional<at::Tensor>* biases[kNumConvGroups] = {&cube_bias, &w_bias, &h_bias, &d_bias};

  IdcConfig cfg;
  cfg.channels = x.size(1);
  cfg.gc = cube_weight.dim() > 0 ? cube_weight.size(0) : 0;
  for (int g = 0; g < kNumConvGroups; ++g) {
    const at::Tensor& w = *weights[g];
    TORCH_CHECK_VALUE(w.dim() == 5 && w.size(1) == 1, "inception_dwconv3d: ", kGroupName[g],
                      " must have the shape of a depthwise Conv3d weight (gc, 1, kd, kh, kw), got shape ",
                      w.sizes());
    TORCH_CHECK_VALUE(w.size(0) == cfg.gc, "inception_dwconv3d: all four weights must have the same "
                      "number of channels gc; cube_weight has ", cfg.gc, " but ", kGroupName[g], " has ",
                      w.size(0));
    TORCH_CHECK_TYPE(is_supported_float(w.scalar_type()), "inception_dwconv3d: ", kGroupName[g],
                     " must be ", kFloats, ", got ", dtype_name(w.scalar_type()));
    TORCH_CHECK_VALUE(w.device() == x.device(), "inception_dwconv3d: ", kGroupName[g], " is on ",
                      w.device(), " but the input is on ", x.device());
    bool odd = true;
    for (int a = 0; a < 3; ++a) {
      const int64_t k = w.size(2 + a);
      odd = odd && k >= 1 && k % 2 == 1;
      cfg.kernel[g][a] = k;
    }
    TORCH_CHECK_VALUE(odd, "inception_dwconv3d: kernel sizes must be odd (zero padding k//2 keeps the "
                      "shape), but ", kGroupName[g], " has kernel ", w.sizes().slice(2));
  }
  for (int g = 0; g < kNumConvGroups; ++g) {
    const auto& b = *biases[g];
    if (!b.has_value() || !b->defined()) continue;
    TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == cfg.gc, "inception_dwconv3d: ", kBiasName[g],
                      " must have shape [", cfg.gc, "], got shape ", b->sizes());
    TORCH_CHECK_TYPE(is_supported_float(b->scalar_type()), "inception_dwconv3d: ", kBiasName[g],
                     " must be ", kFloats, ", got ", dtype_name(b->scalar_type()));
    TORCH_CHECK_VALUE(b->device() == x.device(), "inception_dwconv3d: ", kBiasName[g], " is on ",
                      b->device(), " but the input is on ", x.device());
  }
  TORCH_CHECK_VALUE(4 * cfg.gc <= cfg.channels, "inception_dwconv3d: the input has ", cfg.channels,
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
  // Test diagnostics: how many CPU kernel passes chose non-temporal (streaming) stores. The
  // kernel is registered by the CPU backend (cpu/inception_dwconv3d_kernel.cpp).
  m.def("cpu_streaming_store_passes() -> int");
}

// The autocast rule (CPU and CUDA) is registered from Python, for this op pair and the Triton
// one alike (fusionseg_kernels/ops/inception_dwconv3d/registration.py).
