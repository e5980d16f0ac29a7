#pragma once
// DDIM inversion: the deterministic probability-flow ODE run forward, from an image to the noise
// that the ODE would turn back into it (Song et al. 2021; used for image-to-image translation by
// Su et al. 2023, "Dual diffusion implicit bridges": invert under the source condition, sample
// back under the target condition).
#include <torch/torch.h>

#include "diffusion/denoiser.h"
#include "diffusion/sampler.h"

namespace diffuse {

// `sigmas`: ascending, all > 0. x enters as the image (x0 space, taken as the sample at
// sigmas[0]) and leaves at sigmas.back(), in VE coordinates (x = x0 + sigma n). Each step is the
// DDIM (eta 0) step reversed, x' = D(x, s) + s' (x - D(x, s)) / s, with the denoiser evaluated at
// the start of the step. `refine` > 0 adds fixed-point iterations that evaluate it at the end,
// x' <- x + (s' - s) eps(x', s') with eps = (x' - D(x', s')) / s', so that a DDIM / Euler step back
// from x' lands on x (exact inversion as the iteration converges; it contracts by
// (1 - s / s') |1 - dD/dx| < 1 per iteration; each iteration costs one evaluation).
// `callback` as for samplers (once per step).
torch::Tensor invert_ddim(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                          const StepCallback& callback = {}, int refine = 0);

}  // namespace diffuse
