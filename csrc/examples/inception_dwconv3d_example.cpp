// A C++ program that calls fusionseg::inception_dwconv3d_forward through libtorch's dispatcher
// (the path for C++ deployments) and checks it against at::conv3d on the same input.
// Prints "ok max_abs_err=<e>" and exits 0 when the fused CPU kernel agrees.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>

int main() {
  const int64_t C = 16, gc = 2, identity = C - 4 * gc;
  at::manual_seed(0);
  at::Tensor x = at::randn({1, C, 7, 9, 13}, at::kDouble);
  const std::vector<std::vector<int64_t>> kernels = {{3, 3, 3}, {1, 1, 11}, {1, 11, 1}, {11, 1, 1}};
  std::vector<at::Tensor> w, b;
  for (const auto& k : kernels) {
    w.push_back(at::randn({gc, 1, k[0], k[1], k[2]}, at::kDouble));
    b.push_back(at::randn({gc}, at::kDouble));
  }
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("fusionseg::inception_dwconv3d_forward", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                  const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                                  const std::optional<at::Tensor>&, const at::Tensor&,
                                  const std::optional<at::Tensor>&)>();
  at::Tensor y = op.call(x, w[0], b[0], w[1], b[1], w[2], b[2], w[3], b[3]);

  std::vector<at::Tensor> parts = {x.narrow(1, 0, identity)};
  for (int g = 0; g < 4; ++g) {
    const auto& k = kernels[g];
    parts.push_back(at::conv3d(x.narrow(1, identity + g * gc, gc), w[g], b[g], {1, 1, 1},
                               {k[0] / 2, k[1] / 2, k[2] / 2}, {1, 1, 1}, gc));
  }
  const double err = (y - at::cat(parts, 1)).abs().max().item<double>();
  std::printf("%s max_abs_err=%.3e\n", err < 1e-10 ? "ok" : "MISMATCH", err);
  return err < 1e-10 ? 0 : 1;
}
