// diffuse samplers: list samplers and sigma schedules.
#include <cstdio>

#include "commands.h"
#include "diffusion/sampler.h"
#include "diffusion/sigmas.h"

namespace cmd_samplers {

void register_cmd(CLI::App& app) {
  auto* cmd = app.add_subcommand("samplers", "List samplers and sigma schedules");
  cmd->callback([] {
    std::printf("samplers (name, order, kind: summary)\n");
    for (const auto& s : diffuse::samplers())
      std::printf("  %-14s order %d  %-13s %s\n", s.name.c_str(), s.order,
                  s.stochastic ? "stochastic" : "deterministic", s.summary.c_str());
    std::printf("\nschedules (--schedule)\n");
    for (const auto& [name, summary, fn] : diffuse::sigma_schedules())
      std::printf("  %-17s %s\n", name.c_str(), summary.c_str());
    std::printf(
        "\nAliases such as \"DPM++ 2M Karras\", \"Euler a\" or diffusers class names are accepted by --sampler.\n");
  });
}

DIFFUSE_COMMAND(30, "samplers", register_cmd);

}  // namespace cmd_samplers
