// fusionseg::instance_norm_leaky_relu_{forward,backward}: schemas and argument checks. The CPU
// kernels are in cpu/instance_norm_act_kernel.cpp; the Python side (reference, fake kernels,
// autograd, autocast) in fusionseg_kernels/ops/instance_norm_act/.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fusionseg/instance_norm_act.h"

namespace fusionseg {

std::string dtype_name(at::ScalarType t);   // ops/inception_dwconv3d.cpp
bool is_supported_float(at::ScalarType t);  // ops/inception_dwconv3d.cpp

// The checks and sentences of fusionseg_kernels/ops/instance_norm_act/validation.py, in the same
// order, as ValueError (TORCH_CHECK_VALUE) or TypeError (TORCH_CHECK_TYPE).
void check_instance_norm_act_args(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, double eps) {
  TORCH_CHECK_VALUE(x.dim() == 5, "instance_norm_leaky_relu expects a 5-D input (N, C, D, H, W), got shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(is_supported_float(x.scalar_type()), "instance_norm_leaky_relu expects a float32, float64, "
                   "float16 or bfloat16 input, got ", dtype_name(x.scalar_type()));
  const int64_t spatial = x.size(2) * x.size(3) * x.size(4);
  TORCH_CHECK_VALUE(spatial > 1 || x.numel() == 0, "instance_norm_leaky_relu: expected more than 1 spatial "
                    "element per channel, got input shape ", x.sizes());
  TORCH_CHECK_VALUE(eps > 0, "instance_norm_leaky_relu: eps must be positive, got ", eps);
  const std::optional<at::Tensor>* params[2] = {&weight, &bias};
  const char* names[2] = {"weight", "bias"};
  for (int i = 0; i < 2; ++i) {
    const auto& p = *params[i];
    if (!p.has_value() || !p->defined()) continue;
    TORCH_CHECK_VALUE(p->dim() == 1 && p->size(0) == x.size(1), "instance_norm_leaky_relu: ", names[i],
                      " must have shape [", x.size(1), "], got shape ", p->sizes());
    TORCH_CHECK_TYPE(is_supported_float(p->scalar_type()), "instance_norm_leaky_relu: ", names[i],
                     " must be float32, float64, float16 or bfloat16, got ", dtype_name(p->scalar_type()));
    TORCH_CHECK_VALUE(p->device() == x.device(), "instance_norm_leaky_relu: ", names[i], " is on ",
                      p->device(), " but the input is on ", x.device());
  }
}

void check_instance_norm_act_backward_args(const at::Tensor& grad_y, const at::Tensor& x) {
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "instance_norm_leaky_relu_backward: grad_y has shape ",
                    grad_y.sizes(), " but x has shape ", x.sizes());
}

}  // namespace fusionseg

TORCH_LIBRARY_FRAGMENT(fusionseg, m) {
  // y = leaky_relu(instance_norm(x) * weight + bias, negative_slope); also returns the per-(n, c)
  // mean and 1 / sqrt(var + eps) (float32, float64 for a float64 input) that the backward uses.
  m.def(
      "instance_norm_leaky_relu_forward(Tensor x, Tensor? weight, Tensor? bias, float eps, "
      "float negative_slope) -> (Tensor, Tensor, Tensor)");
  // The forward in place, without statistics (inference).
  m.def(
      "instance_norm_leaky_relu_(Tensor(a!) x, Tensor? weight, Tensor? bias, float eps, float negative_slope) "
      "-> ()");
  // (grad_x, grad_weight, grad_bias); the parameter gradients are empty when weight is None.
  m.def(
      "instance_norm_leaky_relu_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, "
      "Tensor? weight, Tensor? bias, float negative_slope) -> (Tensor, Tensor, Tensor)");
}
