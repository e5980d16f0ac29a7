// diffuse upscale: super-resolution with a model trained by `diffuse train --task superres`; a
// thin client of diffuse::Upscaler (diffuse/upscale.h).
#include <cstdio>
#include <filesystem>
#include <memory>

#include "commands.h"
#include "core/error.h"
#include "core/image.h"
#include "core/progress.h"
#include "core/strings.h"
#include "diffuse/diffuse.h"

namespace fs = std::filesystem;

namespace cmd_upscale {

using namespace diffuse;

struct Args {
  std::string model, image, out, device = "cpu";
  int threads = 0;
  double eta = NAN;
  UpscaleRequest req;
};

void run(Args& a) {
  cli::apply_threads(a.threads);
  if (!ends_with(a.out, ".png")) throw Error("--out " + a.out + ": expected FILE.png");
  const fs::path parent = fs::path(a.out).parent_path();
  if (!parent.empty() && !fs::is_directory(parent))
    throw Error("--out " + a.out + ": folder " + parent.string() + " does not exist");
  if (!std::isnan(a.eta)) a.req.eta = a.eta;
  a.req.image = to_tensor(read_image(a.image));                   // native channels; errors name the file
  if (auto e = a.req.check(); !e.empty()) throw RequestError(e);  // before loading the model
  LoadOptions lo;
  lo.device = a.device;
  Upscaler up = Upscaler::load(a.model, lo);
  Progress progress(0, "upscale", "step");
  GenerateHooks hooks;
  hooks.progress = [&](const ProgressInfo& p) {
    if (p.step == 1) progress = Progress(p.total, "upscale", "step");
    progress.update(p.step, "sigma " + std::to_string(p.sigma).substr(0, 6));
  };
  UpscaleResult res = up.upscale(a.req, hooks);
  progress.finish();
  write_png(a.out, to_image(res.image.clamp(-1, 1)), {{"parameters", res.infotext}});
  std::printf("wrote %s (%lldx%lld, %.1f s)\n", a.out.c_str(), static_cast<long long>(res.image.size(2)),
              static_cast<long long>(res.image.size(1)), res.seconds);
}

void register_cmd(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto& r = a->req;
  auto* cmd = app.add_subcommand(
      "upscale", "Super-resolution with a model trained by `diffuse train --task superres` (tiles large images)");
  cmd->add_option("--model", a->model, "Super-resolution model folder")->required();
  cmd->add_option("--image", a->image, "Low-resolution input (PNG or JPEG)")->required();
  cmd->add_option("--out", a->out, "Output FILE.png (written atomically, with its parameters)")->required();
  cmd->add_option("--scale", r.scale, "Upscaling factor (0 = the model's; other values must equal it)")
      ->capture_default_str();
  cmd->add_flag("--convert", r.convert_channels,
                "Convert an image whose channels differ from the model's (RGB -> grey by luma, grey -> RGB)");
  cmd->add_option("--sampler", r.sampler, "Sampler (see diffuse samplers)")->capture_default_str();
  cmd->add_option("--schedule", r.schedule, "Sigma schedule (default: the sampler's)");
  cmd->add_option("--steps", r.steps, "Sampling steps")->capture_default_str();
  cmd->add_option("--seed", r.seed, "Seed of the noise")->capture_default_str();
  cmd->add_option("--rng", r.rng, "cpu or philox")->capture_default_str();
  cmd->add_option("--eta", a->eta, "Ancestral / DDIM noise (default: the sampler's)");
  cmd->add_option("--s-noise", r.s_noise, "Noise multiplier of stochastic samplers")->capture_default_str();
  cmd->add_option("--tile-overlap", r.tile_overlap,
                  "Pixels shared by neighbouring tiles (output resolution) for images larger than the model's size")
      ->capture_default_str();
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cli::add_threads_option(cmd, &a->threads);
  cmd->callback([a] { run(*a); });
}

DIFFUSE_COMMAND(22, "upscale", register_cmd);

}  // namespace cmd_upscale
