// diffuse generate: sample images from a model folder.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "commands.h"
#include "core/error.h"
#include "core/image.h"
#include "core/progress.h"
#include "core/runtime.h"
#include "core/safetensors.h"
#include "generate_sd.h"
#include "pipelines/pixel_pipeline.h"

namespace fs = std::filesystem;

namespace cmd_generate {

struct Args {
  std::string model, guide_model, out = "samples.png", cls, device = "cpu";
  int threads = 0, nrow = 0;
  diffuse::GenerateOptions g;
  diffuse::cli::SdArgs sd;
};

void run(Args& a) {
  diffuse::cli::apply_threads(a.threads);
  if (diffuse::cli::is_sd_model(a.model)) {
    if (!a.guide_model.empty())
      throw diffuse::Error(
          "--guide-model: autoguidance is for class-conditional and unconditional models, not "
          "Stable Diffusion");
    return diffuse::cli::run_sd_generate(a.model, a.out, a.device, a.nrow, a.g, a.sd);
  }
  // Validate the output target before any work.
  using diffuse::cli::OutKind;
  const OutKind kind = diffuse::cli::output_kind(a.out);

  auto pipe = diffuse::PixelPipeline::load(a.model, diffuse::parse_device(a.device));
  auto& g = a.g;
  if (!a.guide_model.empty()) g.guide = diffuse::cli::load_guide(a.guide_model, pipe);
  if (!a.cls.empty()) {
    int64_t k = pipe.class_index(a.cls);
    g.classes.assign(static_cast<size_t>(g.n), k);
  } else if (pipe.class_conditional()) {
    // One row per class, cycling through the classes.
    int k = static_cast<int>(pipe.class_names.size());
    int per = std::max(1, g.n / k);
    g.classes.clear();
    for (int i = 0; i < g.n; ++i) g.classes.push_back(std::min(k - 1, i / per) % k);
    if (a.nrow == 0) a.nrow = per;
  }
  diffuse::Progress progress(0, "generate", "step");
  int total_batches = (g.n + g.batch_size - 1) / g.batch_size;
  int batch_idx = 0;
  auto cb = [&](const diffuse::StepInfo& s) {
    if (s.step == 0 && batch_idx == 0)
      progress = diffuse::Progress(static_cast<int64_t>(s.total) * total_batches, "generate", "step");
    int64_t done = static_cast<int64_t>(batch_idx) * s.total + s.step + 1;
    if (s.step + 1 == s.total) ++batch_idx;
    progress.update(done, "sigma " + std::to_string(s.sigma_next).substr(0, 6));
  };
  g.callback = cb;
  auto res = diffuse::generate(pipe, g);
  progress.finish();
  if (kind == OutKind::Raw) {
    diffuse::safetensors::save(a.out, {{"samples", res.samples}, {"noise", res.noise}},
                               {{"parameters", diffuse::generation_parameters(pipe, g, 0)}});
  } else if (kind == OutKind::Grid) {
    int nrow = a.nrow > 0 ? a.nrow : static_cast<int>(std::ceil(std::sqrt(static_cast<double>(g.n))));
    auto grid = diffuse::make_grid(res.samples.clamp(-1, 1), nrow, 2, 1.0);
    std::string params = diffuse::generation_parameters(pipe, g, 0);
    params += "\nGrid: " + std::to_string(g.n) + " images, seeds " + std::to_string(g.seed) + ".." +
              std::to_string(g.seed + static_cast<uint64_t>(g.n) - 1) + ", " + std::to_string(nrow) + " per row";
    diffuse::write_png(a.out, diffuse::to_image(grid), {{"parameters", params}});
  } else {
    fs::create_directories(a.out);
    for (int i = 0; i < g.n; ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "%05d-%llu.png", i, static_cast<unsigned long long>(g.seed + i));
      diffuse::write_png((fs::path(a.out) / name).string(), diffuse::to_image(res.samples[i].clamp(-1, 1)),
                         {{"parameters", diffuse::generation_parameters(pipe, g, i)}});
    }
  }
  std::printf("wrote %s (%d image%s)\n", a.out.c_str(), g.n, g.n == 1 ? "" : "s");
}

void register_cmd(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("generate", "Generate images from a model folder");
  cmd->add_option("--model", a->model,
                  "Model: diffusers pipeline or UNet folder, or a Stable Diffusion .safetensors checkpoint")
      ->required();
  a->sd.num = cmd->add_option("-n,--num", a->g.n, "Number of images (Stable Diffusion default 1)")
                  ->capture_default_str()
                  ->check(CLI::PositiveNumber);
  cmd->add_option("--class", a->cls, "Class name or index (default: rows of every class)");
  a->sd.guidance = cmd->add_option("--guidance,--cfg", a->g.guidance,
                                   "Classifier-free guidance scale (1 = off; Stable Diffusion default 7.5)")
                       ->capture_default_str();
  cmd->add_option("--cfg-rescale", a->g.cfg_rescale, "CFG-rescale factor phi (0 = off)")->capture_default_str();
  diffuse::cli::add_guidance_interval_option(cmd, &a->g.guidance_sigma_lo, &a->g.guidance_sigma_hi);
  diffuse::cli::add_guide_model_option(cmd, &a->guide_model, &a->g.guide_unconditional);
  a->sd.sampler = cmd->add_option("--sampler", a->g.sampler,
                                  "Sampler (see `diffuse samplers`; Stable Diffusion default: the folder's scheduler)")
                      ->capture_default_str();
  cmd->add_option("--schedule", a->g.schedule, "Sigma schedule (default: the sampler's; see `diffuse samplers`)");
  cmd->add_option("--sigmas", a->g.sigmas, "Custom descending sigmas a,b,c,...");
  cmd->add_option("--steps", a->g.steps, "Sampling steps")->capture_default_str();
  cmd->add_option("--eta", a->g.eta, "Noise of ancestral / DDIM steps")->capture_default_str();
  cmd->add_option("--s-noise", a->g.s_noise, "Noise multiplier of stochastic samplers")->capture_default_str();
  cmd->add_option("--seed", a->g.seed, "Seed of image 0 (image i uses seed + i)")->capture_default_str();
  cmd->add_option("--rng", a->g.rng, "Noise: cpu (torch CPU generator, as diffusers) or philox (A1111 GPU-style)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "philox"}));
  a->sd.batch = cmd->add_option("--batch-size", a->g.batch_size, "Images per forward pass (Stable Diffusion default 1)")
                    ->capture_default_str()
                    ->check(CLI::PositiveNumber);
  cmd->add_option("--nrow", a->nrow, "Images per grid row (0 = auto)");
  cmd->add_option("--out", a->out, "FILE.png (grid), DIR/ (one PNG each) or FILE.safetensors (raw samples + noise)")
      ->capture_default_str();
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  diffuse::cli::add_sd_options(cmd, &a->sd);
  diffuse::cli::add_threads_option(cmd, &a->threads);
  cmd->callback([a] { run(*a); });
}

DIFFUSE_COMMAND(20, "generate", register_cmd);

}  // namespace cmd_generate
