// diffuse eval-upscale: PSNR, SSIM and FID of a super-resolution model against bicubic
// upsampling on held-out images (eval/superres_eval.h).
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/image.h"
#include "core/runtime.h"
#include "eval/evaluate.h"
#include "eval/superres_eval.h"
#include "train/dataset.h"

namespace cmd_eval_upscale {

using namespace diffuse;

struct Args {
  std::string model, data = "fashion-mnist", classifier, grid, json_out, device = "cpu";
  int n = 1000, threads = 0;
  double eta = NAN;
  UpscaleOptions o;
};

void run(Args& a) {
  cli::apply_threads(a.threads);
  if (a.n < 2) throw Error("-n " + std::to_string(a.n) + ": must be at least 2");
  a.o.eta = a.eta;
  const SuperResPipeline sr = SuperResPipeline::load(a.model, parse_device(a.device));
  const Dataset test = load_dataset(a.data, "test");
  const int64_t n = std::min<int64_t>(a.n, test.size());
  const auto hr = test.images.slice(0, 0, n);  // the first n held-out images
  const FeatureNet net = FeatureNet::load(a.classifier.empty() ? find_classifier(a.data) : a.classifier);
  torch::Tensor out;
  const SuperResScores r = score_superres(sr, hr, a.o, &net, &out);
  std::printf("%lld held-out %s images, %dx (%d -> %d px), %s %d steps, %.1f s\n", static_cast<long long>(r.n),
              a.data.c_str(), sr.config.scale, sr.config.low_resolution_size, sr.config.high_resolution_size,
              a.o.sampler.c_str(), a.o.steps, r.seconds);
  std::printf("%-8s %10s %10s\n", "", "model", "bicubic");
  std::printf("%-8s %10.3f %10.3f\n", "PSNR dB", r.psnr_model, r.psnr_bicubic);
  std::printf("%-8s %10.4f %10.4f\n", "SSIM", r.ssim_model, r.ssim_bicubic);
  std::printf("%-8s %10.3f %10.3f\n", "FID", r.fid_model, r.fid_bicubic);
  if (!a.json_out.empty()) {
    nlohmann::json j = {{"model", a.model},
                        {"data", a.data},
                        {"split", "test"},
                        {"n", r.n},
                        {"scale", sr.config.scale},
                        {"sampler", a.o.sampler},
                        {"steps", a.o.steps},
                        {"seed", a.o.seed},
                        {"classifier", net.source()},
                        {"psnr", {{"model", r.psnr_model}, {"bicubic", r.psnr_bicubic}}},
                        {"ssim", {{"model", r.ssim_model}, {"bicubic", r.ssim_bicubic}}},
                        {"fid", {{"model", r.fid_model}, {"bicubic", r.fid_bicubic}}},
                        {"seconds", r.seconds}};
    write_file_atomically(a.json_out, j.dump(2) + "\n");
  }
  if (!a.grid.empty()) {  // rows: low resolution (enlarged), bicubic, model, original
    const int64_t k = std::min<int64_t>(8, n);
    auto ref = hr.slice(0, 0, k).to(torch::kFloat32) / 127.5 - 1;
    auto lr = sr_downsample(ref, sr.config.scale);
    auto rows = superres_comparison(lr, sr.config.scale, out.slice(0, 0, k), ref);
    write_png(a.grid, to_image(make_grid(rows.clamp(-1, 1), static_cast<int>(k), 2, 1.0)),
              {{"parameters", "rows: low resolution, bicubic, " + sr.pipe.source + ", original\n" +
                                  upscale_parameters(sr, a.o, sr.config.scale, ref.size(3), ref.size(2), 0)}});
  }
}

void register_cmd(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("eval-upscale",
                                 "Score a super-resolution model against bicubic on held-out images: PSNR, SSIM, FID");
  cmd->add_option("--model", a->model, "Super-resolution model folder")->required();
  cmd->add_option("--data", a->data, "Dataset whose test split is scored")->capture_default_str();
  cmd->add_option("-n,--n", a->n, "Held-out images (the first n of the test split)")->capture_default_str();
  cmd->add_option("--classifier", a->classifier, "Feature network for FID (default: models/<data>-classifier)");
  cmd->add_option("--sampler", a->o.sampler, "Sampler")->capture_default_str();
  cmd->add_option("--schedule", a->o.schedule, "Sigma schedule (default: the sampler's)");
  cmd->add_option("--steps", a->o.steps, "Sampling steps")->capture_default_str();
  cmd->add_option("--seed", a->o.seed, "Seed of image 0 (image i uses seed + i)")->capture_default_str();
  cmd->add_option("--eta", a->eta, "Ancestral / DDIM noise (default: the sampler's)");
  cmd->add_option("--grid", a->grid,
                  "Also write a picture of the first 8: low resolution | bicubic | model | original");
  cmd->add_option("--json-out", a->json_out, "Also write the scores as JSON");
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cli::add_threads_option(cmd, &a->threads);
  cmd->callback([a] { run(*a); });
}

DIFFUSE_COMMAND(62, "eval-upscale", register_cmd);

}  // namespace cmd_eval_upscale
