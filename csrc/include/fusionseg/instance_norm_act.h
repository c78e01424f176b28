// fusionseg::instance_norm_leaky_relu_*: the argument checks shared by the backends.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace fusionseg {

// Checks x (5-D, a float dtype, more than one spatial element), the optional affine weight and
// bias ([C], a float dtype, x's device) and eps (> 0); one TORCH_CHECK sentence per failure.
void check_instance_norm_act_args(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, double eps);

// The backward's: grad_y has x's shape.
void check_instance_norm_act_backward_args(const at::Tensor& grad_y, const at::Tensor& x);

}  // namespace fusionseg
