// diffuse eval: FID, KID, precision/recall and class agreement of a model (or a folder of
// images) in the space of a feature network trained by `diffuse train-classifier`.
#include <cstdio>
#include <map>
#include <memory>

#include "commands.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/runtime.h"
#include "eval/evaluate.h"
#include "launch.h"
#include "train/captioned.h"
#include "train/distributed.h"

namespace cmd_eval {

struct Args {
  std::string model, images, data, classifier, guide_model, device = "cpu", json_out;
  std::string dtype = "fp32";
  diffuse::EvalOptions o;
  int threads = 0;
  bool json = false, no_floor = false, quiet = false;
  diffuse::cli::DistFlags dist;
};

void run(Args& a) {
  if (a.model.empty() == a.images.empty()) throw diffuse::Error("pass exactly one of --model DIR or --images DIR");
  if (a.dist.nproc_per_node > 1 && a.model.empty())
    throw diffuse::Error("--nproc-per-node: only the generation of --model evaluations is sharded");
  if (diffuse::cli::launch_local(a.dist, a.threads)) return;
  diffuse::cli::apply_threads(a.threads);
  // Several processes: each generates its share of the samples, rank 0 gathers and scores them.
  std::shared_ptr<diffuse::Distributed> dist = a.model.empty() ? nullptr : diffuse::cli::join_job(a.dist, a.device);
  auto device = diffuse::parse_device(a.device);
  auto& o = a.o;
  const std::string dtype = diffuse::resolve_dtype(a.dtype, device);
  o.generate.dtype = dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  if (dist) {
    o.generate.shard = dist->rank();
    o.generate.shards = dist->world_size();
    o.gather = [dist](const torch::Tensor& mine) {
      auto all = diffuse::cli::gather_shards(*dist, mine, "the generated samples");
      return dist->main() ? all : torch::Tensor();
    };
    if (!dist->main()) a.quiet = true;
  }
  o.data = a.data;
  o.floor = !a.no_floor;
  if (!a.model.empty() && o.n < 2) throw diffuse::Error("--n must be at least 2 (got " + std::to_string(o.n) + ")");
  if (!a.images.empty() && o.n == 1) throw diffuse::Error("--n must be at least 2 (or 0 for all images)");

  std::string clf = a.classifier;
  if (clf.empty()) {
    // a captioned dataset is scored with its images' classifier (emoji-captions: emoji)
    const std::string data = a.data.empty() ? "fashion-mnist" : a.data;
    const std::string images = diffuse::captioned_images_dataset(data);
    clf = diffuse::find_classifier(images.empty() ? data : images);
  }
  auto net = diffuse::FeatureNet::load(clf, device);
  if (!a.data.empty() && !net.config().dataset.empty() && a.data != net.config().dataset &&
      diffuse::captioned_images_dataset(a.data) != net.config().dataset)
    std::fprintf(stderr, "note: the feature network %s was trained on %s, scoring against %s\n", clf.c_str(),
                 net.config().dataset.c_str(), a.data.c_str());

  std::map<std::string, std::unique_ptr<diffuse::Progress>> bars;
  if (!a.quiet) {
    o.progress = [&](const std::string& stage, int64_t done, int64_t total) {
      auto& b = bars[stage];
      if (!b) b = std::make_unique<diffuse::Progress>(total, stage, stage == "metrics" ? "set" : "img");
      if (done >= total) {
        b->finish();
        b = std::make_unique<diffuse::Progress>(0, stage, "", /*enabled=*/false);  // finished: ignore repeats
      } else {
        b->update(done);
      }
    };
  }
  diffuse::EvalReport r;
  if (!a.model.empty() && diffuse::SDPipeline::is_sd_folder(a.model)) {
    if (dist) throw diffuse::Error("--nproc-per-node: text-to-image evaluations run in one process");
    const auto pipe = diffuse::load_sd(a.model, device, o.generate.dtype);
    r = diffuse::evaluate_text_to_image(pipe, net, o);
  } else if (!a.model.empty()) {
    auto pipe = diffuse::PixelPipeline::load(a.model, device);
    diffuse::check_compatible(pipe, net);  // before any generation
    if (!a.guide_model.empty()) o.generate.guide = diffuse::cli::load_guide(a.guide_model, pipe);
    r = diffuse::evaluate_pipeline(pipe, net, o);
    if (dist && !dist->main()) return;  // rank 0 scores and reports
  } else {
    r = diffuse::evaluate_images(a.images, net, o);
  }
  if (!a.json_out.empty()) {
    FILE* f = std::fopen(a.json_out.c_str(), "w");
    if (!f) throw diffuse::Error("--json-out " + a.json_out + ": cannot write");
    std::string j = r.to_json();
    std::fwrite(j.data(), 1, j.size(), f);
    std::fclose(f);
  }
  std::string out = a.json ? r.to_json() : r.table();
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
}

void register_cmd(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("eval",
                                 "Score a model (or a folder of images): FID, KID, precision/recall and class "
                                 "agreement against real data, beside the real-data floor");
  auto* model = cmd->add_option(
      "--model", a->model,
      "Model folder to sample from (a Stable Diffusion pipeline is scored on the held-out captions of --data, e.g. "
      "emoji-captions)");
  auto* images = cmd->add_option("--images", a->images,
                                 "Folder of PNG/JPEG images to score instead of a model "
                                 "(class subfolders give class agreement)");
  model->excludes(images);
  cmd->add_option("--data", a->data, "Reference dataset (default: the feature network's training data)");
  cmd->add_option("--classifier", a->classifier,
                  "Feature network folder (default: models/<data>-classifier, see `diffuse train-classifier`)");
  cmd->add_option("-n,--n", a->o.n, "Samples to generate (images: at most this many, 0 = all)")->capture_default_str();
  cmd->add_option("--sampler", a->o.generate.sampler, "Sampler (see `diffuse samplers`)")->capture_default_str();
  cmd->add_option("--schedule", a->o.generate.schedule, "Sigma schedule (default: the sampler's)");
  cmd->add_option("--sigmas", a->o.generate.sigmas,
                  "Custom descending sigmas a,b,c,... (overrides --schedule, --steps)");
  cmd->add_option("--steps", a->o.generate.steps, "Sampling steps")->capture_default_str();
  cmd->add_option("--guidance,--cfg", a->o.generate.guidance, "Classifier-free guidance scale (1 = off)")
      ->capture_default_str();
  diffuse::cli::add_guidance_interval_option(cmd, &a->o.generate.guidance_sigma_lo, &a->o.generate.guidance_sigma_hi);
  diffuse::cli::add_guide_model_option(cmd, &a->guide_model, &a->o.generate.guide_unconditional);
  cmd->add_option("--eta", a->o.generate.eta, "Noise of ancestral / DDIM steps");
  cmd->add_option("--seed", a->o.generate.seed, "Seed of sample 0 (sample i uses seed + i)")->capture_default_str();
  cmd->add_option("--batch-size", a->o.generate.batch_size, "Images per forward pass")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--dtype", a->dtype,
                  "Compute dtype of the model's network: fp32 (default, so that scores compare across machines), "
                  "bf16, or auto (bf16 on CPUs with AVX-512 BF16 / AMX)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16", "auto"}))
      ->needs(model);
  cmd->add_option("--cache-dir", a->o.cache_dir, "Cache of reference features (\"\" = none)")->capture_default_str();
  cmd->add_flag("--no-floor", a->no_floor, "Skip the real-data floor (held-out real images)");
  cmd->add_flag("--per-class", a->o.per_class,
                "Also report FID (against the class's training images) and agreement for each class, beside the "
                "floor's");
  cmd->add_option("--save-samples", a->o.save_samples,
                  "Also write the scored samples as PNGs to this new folder (a subfolder per class; `eval --images` "
                  "scores it again)")
      ->needs(model);
  cmd->add_flag("--json", a->json, "Print JSON instead of the table");
  cmd->add_option("--json-out", a->json_out, "Also write the JSON report to this file");
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_flag("--quiet", a->quiet, "No progress output");
  diffuse::cli::add_threads_option(cmd, &a->threads);
  diffuse::cli::add_dist_options(cmd, &a->dist, true);
  cmd->callback([a] { run(*a); });
}

DIFFUSE_COMMAND(60, "eval", register_cmd);

}  // namespace cmd_eval
