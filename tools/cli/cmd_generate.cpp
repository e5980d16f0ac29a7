// diffuse generate: a thin client of the library API (diffuse/diffuse.h). Flags become one
// GenerationRequest (request_flags.cpp), the model runs it, the images are written.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "core/image.h"
#include "core/memory.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "core/strings.h"
#include "diffuse/diffuse.h"
#include "launch.h"
#include "request_flags.h"
#include "train/distributed.h"

namespace fs = std::filesystem;

namespace cmd_generate {

using namespace diffuse;

struct Args {
  std::string model, out = "samples.png";
  int threads = 0, nrow = 0;
  bool timings = false;
  cli::RequestArgs r;
  cli::DistFlags dist;
};

enum class OutKind { Grid, Dir, Raw };

// Validates --out before any work.
OutKind output_kind(const std::string& out) {
  OutKind kind;
  if (ends_with(out, "/") || fs::is_directory(out))
    kind = OutKind::Dir;
  else if (ends_with(out, ".png"))
    kind = OutKind::Grid;
  else if (ends_with(out, ".safetensors"))
    kind = OutKind::Raw;
  else
    throw Error("--out " + out + ": expected FILE.png (grid), DIR/ (one PNG per image) or FILE.safetensors");
  fs::path parent = kind == OutKind::Dir ? fs::path(out) : fs::path(out).parent_path();
  if (kind != OutKind::Dir && !parent.empty() && !fs::is_directory(parent))
    throw Error("--out " + out + ": folder " + parent.string() + " does not exist");
  return kind;
}

torch::Tensor tensor_from(const std::string& path, const std::string& name, bool required) {
  auto f = safetensors::File::open(path);
  if (!f.contains(name)) {
    if (required) throw Error(path + ": no tensor '" + name + "'");
    return {};
  }
  auto t = f.get(name).to(torch::kFloat32);
  return t.dim() == 2 ? t.unsqueeze(0) : t;  // a single [L, C] prompt embedding
}

void run(Args& a) {
  const OutKind kind = output_kind(a.out);
  GenerationRequest req = cli::build_request(a.r);
  req.check();  // before loading anything
  if (cli::launch_local(a.dist, a.threads)) return;
  cli::apply_threads(a.threads);
  // Several processes: each generates its share of the batches, rank 0 gathers and writes them.
  std::shared_ptr<Distributed> dist = cli::join_job(a.dist, a.r.load.device);
  GenerateHooks hooks;
  if (dist) {
    if (req.seed < 0) {  // one random seed for every rank
      auto seed = torch::tensor({static_cast<int64_t>(std::random_device{}() >> 1)}, torch::kInt64);
      dist->broadcast({seed}, "the seed");
      req.seed = seed.item<int64_t>();
    }
    hooks.shard = dist->rank();
    hooks.shards = dist->world_size();
  }

  if (!a.r.latents.empty()) hooks.latents = tensor_from(a.r.latents, "latents", true);
  if (!a.r.prompt_embeds.empty()) {
    hooks.prompt_embeds = tensor_from(a.r.prompt_embeds, "prompt_embeds", true);
    hooks.negative_prompt_embeds = tensor_from(a.r.prompt_embeds, "negative_prompt_embeds", false);
    // SDXL's pooled embeddings (diffusers' names), [P] or [n, P]
    for (auto [name, dst] : {std::pair{"pooled_prompt_embeds", &hooks.pooled_prompt_embeds},
                             {"negative_pooled_prompt_embeds", &hooks.negative_pooled_prompt_embeds}}) {
      *dst = tensor_from(a.r.prompt_embeds, name, false);
      if (dst->defined() && dst->dim() == 3 && dst->size(0) == 1) *dst = (*dst)[0];  // tensor_from adds a dim to 2-D
      if (dst->defined() && dst->dim() == 1) *dst = dst->unsqueeze(0);
    }
    // the text encoder is needed only for an unconditional branch without embeddings
    const bool cfg = !req.guidance || *req.guidance > 1;
    a.r.load.text_encoder = cfg && !hooks.negative_prompt_embeds.defined();
  }

  using Clock = std::chrono::steady_clock;
  const auto t_load = Clock::now();
  return_large_frees_to_os();  // weights upcast block by block must not pile up in the heap
  a.r.load.one_shot = true;    // one request: each component is loaded only while it is needed
  Model model = Model::load(a.model, a.r.load);
  double load_s = std::chrono::duration<double>(Clock::now() - t_load).count();
  const double gb = 1e-9;
  double peak_load_gb = static_cast<double>(peak_rss_bytes()) * gb;

  Progress progress(0, "generate", "step");
  std::vector<double> step_s;  // per step; the first also holds prompt encoding and latent setup
  double peak_steps_gb = 0;
  auto last = Clock::now();
  hooks.progress = [&](const ProgressInfo& p) {
    const auto now = Clock::now();
    step_s.push_back(std::chrono::duration<double>(now - last).count());
    last = now;
    peak_steps_gb = static_cast<double>(peak_rss_bytes()) * gb;
    if (p.step == 1) progress = Progress(p.total, "generate", "step");
    progress.update(p.step, "sigma " + std::to_string(p.sigma).substr(0, 6));
  };
  hooks.message = [](const std::string& m) { std::printf("%s\n", m.c_str()); };
  hooks.loaded = [&](const std::string& component, double seconds) {
    load_s += seconds;  // steps and the decode are timed without it
    if (component != "vae") peak_load_gb = static_cast<double>(peak_rss_bytes()) * gb;
    if (a.timings) std::fprintf(stderr, "loaded %s in %.3f s\n", component.c_str(), seconds);
    last += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  };
  GenerationResult res = model.generate(req, hooks);
  const double decode_s = std::chrono::duration<double>(Clock::now() - last).count();  // after the last step
  progress.finish();
  if (dist) {
    res.images = cli::gather_shards(*dist, res.images, "the generated images");
    res.noise = cli::gather_shards(*dist, res.noise, "the generated images' noise");
    res.latents = cli::gather_shards(*dist, res.latents, "the generated latents");
    if (!dist->main()) return;  // rank 0 writes
  }
  if (a.timings) {
    std::ostringstream js;
    js << "{\"load_s\": " << load_s << ", \"step_s\": [";
    for (size_t i = 0; i < step_s.size(); ++i) js << (i ? ", " : "") << step_s[i];
    js << "], \"decode_s\": " << decode_s << ", \"peak_rss_gb\": {\"load\": " << peak_load_gb
       << ", \"steps\": " << peak_steps_gb << ", \"decode\": " << static_cast<double>(peak_rss_bytes()) * gb << "}}";
    std::fprintf(stderr, "timings %s\n", js.str().c_str());
  }

  const int n = static_cast<int>(res.images.size(0));
  const GenerationRequest& ran = res.request;
  if (kind == OutKind::Raw) {
    std::map<std::string, torch::Tensor> t{{"samples", res.images}, {"noise", res.noise}};
    if (res.latents.defined()) t["latents"] = res.latents;
    safetensors::save(a.out, t, {{"parameters", res.infotexts[0]}});
  } else if (kind == OutKind::Grid) {
    int nrow = a.nrow;
    const auto& classes = model.info().classes;
    if (nrow == 0 && !classes.empty() && ran.class_label.empty() && ran.prompt.empty())
      nrow = std::max(1, n / static_cast<int>(classes.size()));  // one row per class
    if (nrow == 0) nrow = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n))));
    auto img = n == 1 ? res.images[0].clamp(-1, 1) : make_grid(res.images.clamp(-1, 1), nrow, 2, 1.0);
    std::string params = res.infotexts[0];
    if (n > 1)
      params += "\nGrid: " + std::to_string(n) + " images, seeds " + std::to_string(ran.seed) + ".." +
                std::to_string(ran.seed + n - 1) + ", " + std::to_string(nrow) + " per row";
    write_png(a.out, to_image(img), {{"parameters", params}});
  } else {
    fs::create_directories(a.out);
    for (int i = 0; i < n; ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "%05d-%lld.png", i, static_cast<long long>(res.seeds[i]));
      write_png((fs::path(a.out) / name).string(), to_image(res.images[i].clamp(-1, 1)),
                {{"parameters", res.infotexts[i]}});
    }
  }
  std::printf("wrote %s (%d image%s)\n", a.out.c_str(), n, n == 1 ? "" : "s");
}

void register_cmd(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("generate", "Generate images from a model folder");
  cmd->add_option("--model", a->model,
                  "Model: diffusers pipeline or UNet folder, or a Stable Diffusion .safetensors checkpoint")
      ->required();
  cli::add_request_options(cmd, &a->r);
  cmd->add_option("--nrow", a->nrow, "Images per grid row (0 = auto)");
  cmd->add_option("--out", a->out, "FILE.png (grid), DIR/ (one PNG each) or FILE.safetensors (raw samples + noise)")
      ->capture_default_str();
  cmd->add_flag("--timings", a->timings,
                "Print stage times on stderr as one JSON line: load, each step (the first includes prompt "
                "encoding), the VAE decode after the last step, and the peak RSS after each stage");
  cli::add_threads_option(cmd, &a->threads);
  cli::add_dist_options(cmd, &a->dist, true);
  cmd->callback([a] { run(*a); });
}

DIFFUSE_COMMAND(20, "generate", register_cmd);

}  // namespace cmd_generate
