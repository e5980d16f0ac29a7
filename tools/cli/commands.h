#pragma once
// Each `diffuse` sub-command lives in its own file (cmd_*.cpp) and registers itself
// with DIFFUSE_COMMAND inside a namespace named after the file (cmd_generate, ...), so that
// the files also build as one unity translation unit. A command's callback throws diffuse::Error for bad input;
// main() prints it and exits 1.
#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>

namespace diffuse {
struct PixelPipeline;
}

namespace diffuse::cli {

using Registrar = std::function<void(CLI::App& app)>;
// `order` sorts commands in --help.
bool add_command(int order, const std::string& name, Registrar reg);

// Shared option: --threads N (0 = one per core), applied by the command itself via apply_threads.
void add_threads_option(CLI::App* cmd, int* threads);
void apply_threads(int threads);

// Shared option: --guidance-interval LO,HI (noise levels sigma in (LO, HI] get guidance;
// HI may be `inf`). Rejects anything but two numbers with 0 <= LO < HI.
void add_guidance_interval_option(CLI::App* cmd, double* lo, double* hi);

// Shared options: --guide-model DIR (autoguidance) and --guide-unconditional, and the loader: the guide on the model's
// device, checked against the model (check_guide); errors name --guide-model.
void add_guide_model_option(CLI::App* cmd, std::string* dir, bool* unconditional);
std::shared_ptr<const PixelPipeline> load_guide(const std::string& dir, const PixelPipeline& pipe);

}  // namespace diffuse::cli

#define DIFFUSE_CMD_CAT2(a, b) a##b
#define DIFFUSE_CMD_CAT(a, b) DIFFUSE_CMD_CAT2(a, b)
#define DIFFUSE_COMMAND(order, name, fn) \
  static const bool DIFFUSE_CMD_CAT(diffuse_cmd_registered_, __COUNTER__) = ::diffuse::cli::add_command(order, name, fn)
