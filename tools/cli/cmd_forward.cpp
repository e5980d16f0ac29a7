// diffuse forward: one forward pass of a network, inputs and outputs as safetensors.
#include <cstdio>
#include <memory>

#include "commands.h"
#include "core/runtime.h"
#include "core/safetensors.h"
#include "pipelines/forward.h"

namespace cmd_forward {

struct Args {
  std::string model, inputs, out, device = "cpu";
  int threads = 0;
};

void register_cmd(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("forward", "Run one forward pass of the network in a model folder");
  cmd->add_option("--model", a->model, "Model folder (config.json + weights)")->required();
  cmd->add_option("--inputs", a->inputs, "Input tensors (.safetensors; sample, timestep, class_labels, ...)")
      ->required();
  cmd->add_option("--out", a->out, "Output .safetensors (out, ...)")->required();
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  diffuse::cli::add_threads_option(cmd, &a->threads);
  cmd->callback([a] {
    diffuse::cli::apply_threads(a->threads);
    auto inputs = diffuse::safetensors::load(a->inputs);
    auto outputs = diffuse::run_forward(a->model, inputs, diffuse::parse_device(a->device));
    diffuse::safetensors::save(a->out, outputs, {{"format", "pt"}});
    for (const auto& [k, v] : outputs) {
      std::printf("%s %s\n", k.c_str(), c10::str(v.sizes()).c_str());
    }
  });
}

DIFFUSE_COMMAND(40, "forward", register_cmd);

}  // namespace cmd_forward
