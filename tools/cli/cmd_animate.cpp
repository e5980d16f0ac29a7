// diffuse animate: the denoising trajectory of one sample, or an interpolation between seeds and
// classes, as an animated GIF or WebP. A thin client of diffuse::animate.
#include <cstdio>
#include <memory>

#include "commands.h"
#include "core/animation.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "diffuse/diffuse.h"
#include "sampling_flags.h"

namespace cmd_animate {

using namespace diffuse;

struct Args {
  std::string model, out;
  int threads = 0, frames = 0;
  int64_t to_seed = 0;
  double guidance = 1;
  bool no_captions = false;
  CLI::Option *frames_opt = nullptr, *to_seed_opt = nullptr, *guidance_opt = nullptr;
  AnimationRequest req;
  cli::SamplingFlags s;
};

void run(Args& a) {
  cli::apply_threads(a.threads);
  AnimationRequest& r = a.req;
  try {
    r.format = animation_format(a.out);
  } catch (const Error& e) {
    throw Error(std::string("--out ") + e.what());
  }
  cli::check_out_folder(a.out);
  if (a.frames_opt->count()) r.frames = a.frames;
  if (a.to_seed_opt->count()) r.to_seed = a.to_seed;
  if (a.guidance_opt->count()) r.generation.guidance = a.guidance;
  r.captions = !a.no_captions;
  GenerationRequest& g = r.generation;
  cli::apply_sampling_flags(a.s, &g);
  auto errors = r.validate();
  if (!errors.empty()) throw RequestError(std::move(errors));  // before loading anything
  Model model = Model::load(a.model, a.s.load);
  AnimationResult res = animate(model, r);
  write_file_atomically(a.out, res.bytes);
  std::printf("wrote %s (%d frames, %dx%d, %s)\n", a.out.c_str(), res.frames, res.width, res.height,
              res.request.mode.c_str());
}

void register_cmd(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("animate", "Animate a model: a denoising trajectory or an interpolation (GIF, WebP)");
  cmd->add_option("--model", a->model, "Model folder (class-conditional or unconditional, pixel or latent)")
      ->required();
  cmd->add_option("--out", a->out, "X.gif or X.webp")->required();
  cmd->add_option("--mode", a->req.mode,
                  "trajectory: one sample's x_t beside its x0 estimate over the steps; interpolate: slerp of the "
                  "initial noise between --seed and --to-seed and/or of the class embedding from --class to "
                  "--to-class")
      ->capture_default_str();
  a->frames_opt = cmd->add_option("--frames", a->frames,
                                  "Frames (trajectory: default every step's state; interpolate: default 16)");
  cmd->add_option("--fps", a->req.fps, "Frames per second")->capture_default_str();
  cmd->add_option("--frame-size", a->req.frame_size,
                  "Upscale each image (nearest neighbour, whole factor) to at least this many pixels")
      ->capture_default_str();
  cmd->add_flag("--no-captions", a->no_captions, "No caption strip (step and sigma, or t) above the frames");
  cmd->add_option("--class", a->req.generation.class_label, "Class (default: the null class)");
  cmd->add_option("--to-class", a->req.to_class, "interpolate: the class of the last frame");
  a->to_seed_opt = cmd->add_option("--to-seed", a->to_seed,
                                   "interpolate: the seed of the last frame (default: --seed + 1, or --seed with "
                                   "--to-class)");
  a->guidance_opt = cmd->add_option("--guidance,--cfg", a->guidance, "Guidance scale (default: the model's)");
  cli::add_sampling_flags(cmd, &a->s, "Sampling steps (default: the model's, else 20)");
  cli::add_threads_option(cmd, &a->threads);
  cmd->callback([a] { run(*a); });
}

DIFFUSE_COMMAND(23, "animate", register_cmd);

}  // namespace cmd_animate
