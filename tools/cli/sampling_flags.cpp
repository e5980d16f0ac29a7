#include "sampling_flags.h"

#include <filesystem>

#include "core/error.h"

namespace diffuse::cli {

void add_sampling_flags(CLI::App* cmd, SamplingFlags* f, const std::string& steps_help) {
  cmd->add_option("--sampler", f->sampler, "Sampler (see `diffuse samplers`; default: the model's recommended)");
  cmd->add_option("--schedule", f->schedule, "Sigma schedule (default: the sampler's; see `diffuse samplers`)");
  f->steps_opt = cmd->add_option("--steps", f->steps, steps_help);
  f->eta_opt = cmd->add_option("--eta", f->eta, "Noise of ancestral / DDIM steps");
  cmd->add_option("--s-noise", f->s_noise, "Noise multiplier of stochastic samplers");
  cmd->add_option("--seed", f->seed, "Seed (default 0; -1 = random)");
  cmd->add_option("--rng", f->rng, "Noise: cpu (torch CPU generator, as diffusers) or philox (A1111 GPU-style)");
  cmd->add_option("--device", f->load.device, "cpu, cuda, cuda:N or auto")->capture_default_str();
}

void check_out_folder(const std::string& out) {
  const auto parent = std::filesystem::path(out).parent_path();
  if (!parent.empty() && !std::filesystem::is_directory(parent))
    throw Error("--out " + out + ": folder " + parent.string() + " does not exist");
}

}  // namespace diffuse::cli
