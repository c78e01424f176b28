// Shared by the CPU and CUDA backends of fusionseg::inception_dwconv3d_*:
// the op's configuration (carried by the weights' shapes) and the argument checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <cstdint>

#if defined(__CUDACC__)
#define FUSIONSEG_HOST_DEVICE __host__ __device__
#else
#define FUSIONSEG_HOST_DEVICE
#endif

namespace fusionseg {

// The four convolution groups, in channel order after the identity channels.
enum ConvGroup : int { kCube = 0, kWBand = 1, kHBand = 2, kDBand = 3, kNumConvGroups = 4 };

struct IdcConfig {
  int64_t channels = 0;   // C
  int64_t identity = 0;   // C - 4 * gc, copied unchanged
  int64_t gc = 0;         // channels per convolution group
  // kernel[g] = (kd, kh, kw) of group g; all odd.
  std::array<std::array<int64_t, 3>, kNumConvGroups> kernel{};

  int64_t kernel_volume(int g) const { return kernel[g][0] * kernel[g][1] * kernel[g][2]; }
};

// Channel c -> its convolution group (0..3), or -1 for an identity channel.
FUSIONSEG_HOST_DEVICE inline int conv_group_of_channel(int64_t c, int64_t identity, int64_t gc) {
  return c < identity ? -1 : static_cast<int>((c - identity) / gc);
}

// Checks every argument of the forward op and returns the configuration. Each failure
// is one TORCH_CHECK sentence a user can act on.
IdcConfig check_inception_dwconv3d_args(const at::Tensor& x,
                                        const at::Tensor& cube_weight,
                                        const std::optional<at::Tensor>& cube_bias,
                                        const at::Tensor& w_weight,
                                        const std::optional<at::Tensor>& w_bias,
                                        const at::Tensor& h_weight,
                                        const std::optional<at::Tensor>& h_bias,
                                        const at::Tensor& d_weight,
                                        const std::optional<at::Tensor>& d_bias);

// True when FUSIONSEG_POISON_OUTPUTS=1: kernels NaN-fill outputs before writing them,
// so tests catch elements a kernel forgot to write.
bool poison_outputs_enabled();

// NaN-fills t when poison_outputs_enabled(); for a kernel's freshly allocated outputs.
void poison(at::Tensor& t);

// Returns a kernel's result laid out like the op's input `like`: the dtype and exactly the
// strides of at::empty_like(like) (what the Python fake/meta kernel returns), copying
// `contiguous_result` into a new tensor only when it does not already have them. Shared by the
// CPU and CUDA kernels (defined in ops/inception_dwconv3d.cpp), so both follow one rule.
at::Tensor match_layout(const at::Tensor& contiguous_result, const at::Tensor& like);

}  // namespace fusionseg
