#include "diffusion/inversion.h"

#include "core/error.h"
#include "diffusion/sampler_util.h"

namespace diffuse {

torch::Tensor invert_ddim(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const StepCallback& callback,
                          int refine) {
  if (sigmas.dim() != 1 || sigmas.size(0) < 1) throw Error("invert_ddim: sigmas must be 1-D and non-empty");
  auto s = sigmas.to(torch::kCPU, torch::kFloat64);
  const int64_t n = s.size(0) - 1;
  for (int64_t i = 0; i <= n; ++i)
    if (!(s[i].item<double>() > 0) || (i > 0 && s[i].item<double>() < s[i - 1].item<double>()))
      throw Error("invert_ddim: sigmas must be positive and ascending");
  for (int64_t i = 0; i < n; ++i) {
    const double si = s[i].item<double>(), sn = s[i + 1].item<double>();
    auto x0 = D(x, torch::full({x.size(0)}, si, x.options()));
    auto next = x0 + (sn / si) * (x - x0);
    for (int k = 0; k < refine; ++k) {  // x' = x + (s' - s) eps(x', s'), contracting: see the header
      auto d = D(next, torch::full({x.size(0)}, sn, x.options()));
      next = x + (1 - si / sn) * (next - d);
    }
    x = next;
    detail::notify(callback, static_cast<int>(i), static_cast<int>(n), si, sn, x, x0);
  }
  return x;
}

}  // namespace diffuse
