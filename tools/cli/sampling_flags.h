#pragma once
// The sampling flags `denoise` and `animate` share (--sampler, --schedule, --steps, --seed, --rng,
// --eta, --s-noise, --device), each written into its field only when given.
#include <CLI/CLI.hpp>
#include <optional>
#include <string>

#include "diffuse/diffuse.h"

namespace diffuse::cli {

struct SamplingFlags {
  std::string sampler, schedule, rng = "cpu";
  int steps = 20;
  int64_t seed = 0;  // reproducible by default on the command line
  double eta = 0, s_noise = 1.0;
  CLI::Option *steps_opt = nullptr, *eta_opt = nullptr;
  LoadOptions load;

  std::optional<int> steps_given() const {
    return steps_opt && steps_opt->count() ? std::optional<int>(steps) : std::nullopt;
  }
  std::optional<double> eta_given() const {
    return eta_opt && eta_opt->count() ? std::optional<double>(eta) : std::nullopt;
  }
};

// Writes the flags into a request with these fields (GenerationRequest, DenoiseRequest).
template <typename Request>
void apply_sampling_flags(const SamplingFlags& f, Request* r) {
  r->sampler = f.sampler;
  r->schedule = f.schedule;
  r->steps = f.steps_given();
  r->seed = f.seed;
  r->rng = f.rng;
  r->eta = f.eta_given();
  r->s_noise = f.s_noise;
}

void add_sampling_flags(CLI::App* cmd, SamplingFlags* f, const std::string& steps_help);
// Checks that the parent folder of an output file exists (before any work).
void check_out_folder(const std::string& out);

}  // namespace diffuse::cli
