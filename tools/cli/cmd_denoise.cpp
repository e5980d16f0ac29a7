// diffuse denoise: a noisy image -> the model's denoiser (mmse) or its sampler entered at the
// image's noise level (sample). A thin client of diffuse::denoise.
#include <cstdio>
#include <memory>

#include "commands.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/strings.h"
#include "diffuse/diffuse.h"
#include "sampling_flags.h"

namespace cmd_denoise {

using namespace diffuse;

struct Args {
  std::string model, image, out = "denoised.png", sigma = "auto";
  int threads = 0;
  DenoiseRequest req;
  cli::SamplingFlags s;
};

void run(Args& a) {
  cli::apply_threads(a.threads);
  if (!ends_with(a.out, ".png") && !ends_with(a.out, ".jpg") && !ends_with(a.out, ".jpeg"))
    throw Error("--out " + a.out + ": expected FILE.png or FILE.jpg");
  cli::check_out_folder(a.out);
  DenoiseRequest& r = a.req;
  if (a.sigma != "auto") {
    try {
      size_t used = 0;
      r.sigma = std::stod(a.sigma, &used);
      if (used != a.sigma.size()) throw std::invalid_argument(a.sigma);
    } catch (const std::logic_error&) {
      throw Error("--sigma " + a.sigma +
                  ": expected auto or a number (the noise's standard deviation in [-1, 1] units)");
    }
  }
  r.image = read_file(a.image);
  cli::apply_sampling_flags(a.s, &r);
  auto errors = r.validate();
  if (!errors.empty()) throw RequestError(std::move(errors));  // before loading anything
  Model model = Model::load(a.model, a.s.load);
  DenoiseResult res = denoise(model, r);
  std::printf("sigma %.4f (%s); estimated from the image: %.4f\n", res.sigma,
              res.sigma_estimated ? "estimated" : "given", res.estimated_sigma);
  const std::string format = ends_with(a.out, ".png") ? "png" : "jpeg";
  write_file_atomically(a.out, encode_image(res.image, format, res.infotext));
  std::printf("wrote %s (%s)\n", a.out.c_str(), r.mode.c_str());
}

void register_cmd(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("denoise", "Remove Gaussian noise from an image with a pixel-space model");
  cmd->add_option("--model", a->model, "Model folder (a pixel-space class-conditional or unconditional model)")
      ->required();
  cmd->add_option("--image", a->image, "The noisy image (PNG or JPEG, the model's size and channels)")->required();
  cmd->add_option("--out", a->out, "FILE.png or FILE.jpg")->capture_default_str();
  cmd->add_option("--sigma", a->sigma,
                  "The noise's standard deviation in [-1, 1] units (8-bit: value / 127.5), or auto to estimate it")
      ->capture_default_str();
  cmd->add_option("--mode", a->req.mode,
                  "mmse: the denoiser's estimate in one call (best PSNR); sample: sample from sigma down to 0 "
                  "(sharper)")
      ->capture_default_str();
  cmd->add_option("--class", a->req.class_label, "Condition on this class (default: the null class, unconditional)");
  cli::add_sampling_flags(cmd, &a->s, "Sampler steps from sigma down to 0 (mode sample; default 20)");
  cli::add_threads_option(cmd, &a->threads);
  cmd->callback([a] { run(*a); });
}

DIFFUSE_COMMAND(22, "denoise", register_cmd);

}  // namespace cmd_denoise
