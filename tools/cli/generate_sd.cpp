#include "generate_sd.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/image.h"
#include "core/memory.h"
#include "core/progress.h"
#include "core/runtime.h"
#include "core/safetensors.h"
#include "core/strings.h"
#include "pipelines/sd_pipeline.h"

namespace fs = std::filesystem;

namespace diffuse::cli {

namespace {

torch::Tensor load_image(const std::string& path, int channels) {
  auto t = to_tensor(convert_channels(read_image(path), channels)).unsqueeze(0);
  return channels == 1 ? (t + 1) / 2 : t;  // masks in [0, 1]
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

torch::Dtype parse_dtype(const std::string& s) {
  if (s == "fp32" || s == "float32") return torch::kFloat32;
  if (s == "fp16" || s == "float16") return torch::kFloat16;
  if (s == "bf16" || s == "bfloat16") return torch::kBFloat16;
  throw Error("--dtype " + s + ": expected fp32, fp16 or bf16");
}

}  // namespace

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

void add_sd_options(CLI::App* cmd, SdArgs* a) {
  cmd->add_option("--prompt,-p", a->prompt, "Stable Diffusion: prompt");
  cmd->add_option("--negative-prompt", a->negative_prompt, "Stable Diffusion: negative prompt");
  cmd->add_option("--width", a->width, "Stable Diffusion: image width, a multiple of 8 (default: the model's)");
  cmd->add_option("--height", a->height, "Stable Diffusion: image height, a multiple of 8 (default: the model's)");
  cmd->add_option("--image", a->image, "img2img / inpainting: init image (PNG or JPEG)");
  cmd->add_option("--strength", a->strength, "img2img: denoising strength in [0, 1]")->capture_default_str();
  cmd->add_option("--mask", a->mask, "Inpainting: mask image, white = repaint");
  cmd->add_option("--mask-blur", a->mask_blur, "Inpainting: Gaussian blur of the mask in pixels")
      ->capture_default_str();
  cmd->add_flag("--only-masked", a->only_masked,
                "Inpainting: work on a crop around the mask, resized to --width/--height");
  cmd->add_option("--only-masked-padding", a->only_masked_padding, "Inpainting: context pixels around the mask")
      ->capture_default_str();
  cmd->add_option("--outpaint", a->outpaint, "Outpainting: pad --image by L,T,R,B pixels and paint the new area");
  cmd->add_option("--latents", a->latents, "Starting latents: safetensors with tensor 'latents' (diffusers latents=)");
  cmd->add_option("--prompt-embeds", a->prompt_embeds,
                  "safetensors with 'prompt_embeds' and optionally 'negative_prompt_embeds'");
  cmd->add_option("--clip-skip", a->clip_skip, "Text-encoder layers skipped at the end (diffusers clip_skip)");
  cmd->add_option("--dtype", a->dtype, "UNet / text-encoder compute dtype: fp32, fp16 or bf16")->capture_default_str();
  cmd->add_option("--prediction", a->prediction, "Single-file checkpoints: epsilon or v_prediction");
  cmd->add_option("--model-config", a->model_config,
                  "Single-file checkpoints: a diffusers pipeline folder whose component configs to use");
  cmd->add_flag("--timings", a->timings,
                "Print stage times on stderr as one JSON line: load, each step (the first includes prompt "
                "encoding), the VAE decode after the last step, and the peak RSS after each stage");
  add_sd_extra_options(cmd, &a->extras);
}

bool is_sd_model(const std::string& path) {
  if (fs::is_regular_file(path)) return ends_with(path, ".safetensors") || ends_with(path, ".ckpt");
  return SDPipeline::is_sd_folder(path);
}

void run_sd_generate(const std::string& model, const std::string& out, const std::string& device, int nrow,
                     const GenerateOptions& g, const SdArgs& a) {
  const OutKind kind = output_kind(out);
  SDOptions o;
  o.n = a.num && a.num->count() ? g.n : 1;
  o.prompt = a.prompt;
  o.negative_prompt = a.negative_prompt;
  o.width = a.width;
  o.height = a.height;
  o.clip_skip = a.clip_skip;
  o.guidance = a.guidance && a.guidance->count() ? g.guidance : 7.5;
  o.cfg_rescale = g.cfg_rescale;
  o.guidance_sigma_lo = g.guidance_sigma_lo;
  o.guidance_sigma_hi = g.guidance_sigma_hi;
  o.sampler = a.sampler && a.sampler->count() ? g.sampler : "";
  o.schedule = g.schedule;
  o.sigmas = g.sigmas;
  o.steps = g.steps;
  o.seed = g.seed;
  o.rng = g.rng;
  o.eta = g.eta;
  o.s_noise = g.s_noise;
  o.batch_size = a.batch && a.batch->count() ? g.batch_size : 1;
  o.strength = a.strength;
  o.mask_blur = a.mask_blur;
  o.only_masked = a.only_masked;
  o.only_masked_padding = a.only_masked_padding;
  if (!a.image.empty()) o.image = load_image(a.image, 3);
  if (!a.mask.empty()) {
    if (a.image.empty()) throw Error("--mask needs --image");
    o.mask = load_image(a.mask, 1);
  }
  if (!a.outpaint.empty()) {
    if (a.image.empty()) throw Error("--outpaint needs --image");
    if (!a.mask.empty()) throw Error("--outpaint makes its own mask: drop --mask");
    int l, t, r, b;
    char tail;
    if (std::sscanf(a.outpaint.c_str(), "%d,%d,%d,%d%c", &l, &t, &r, &b, &tail) != 4)
      throw Error("--outpaint " + a.outpaint + ": expected L,T,R,B pixel counts");
    std::tie(o.image, o.mask) = outpaint_pad(o.image, l, t, r, b);
    o.strength = 1.0;
  }
  if (!a.latents.empty()) o.latents = tensor_from(a.latents, "latents", true);
  if (!a.prompt_embeds.empty()) {
    o.prompt_embeds = tensor_from(a.prompt_embeds, "prompt_embeds", true);
    o.negative_prompt_embeds = tensor_from(a.prompt_embeds, "negative_prompt_embeds", false);
  }
  const bool need_text = a.prompt_embeds.empty() || (o.guidance > 1 && !o.negative_prompt_embeds.defined());
  using Clock = std::chrono::steady_clock;
  const auto t_load = Clock::now();
  return_large_frees_to_os();  // weights upcast block by block must not pile up in the heap
  auto pipe = load_sd(model, parse_device(device), parse_dtype(a.dtype), need_text, a.prediction, a.model_config);
  apply_sd_extras(pipe, o, a.extras);

  const double load_s = std::chrono::duration<double>(Clock::now() - t_load).count();
  const double gb = 1e-9;
  const double peak_load_gb = static_cast<double>(peak_rss_bytes()) * gb;

  Progress progress(0, "generate", "step");
  int done = 0;
  std::vector<double> step_s;  // per step; the first also holds prompt encoding and latent setup
  double peak_steps_gb = 0;
  auto last = Clock::now();
  o.callback = [&](const StepInfo& s) {
    const auto now = Clock::now();
    step_s.push_back(std::chrono::duration<double>(now - last).count());
    last = now;
    peak_steps_gb = static_cast<double>(peak_rss_bytes()) * gb;
    if (done == 0)
      progress =
          Progress(static_cast<int64_t>(s.total) * ((o.n + o.batch_size - 1) / o.batch_size), "generate", "step");
    progress.update(++done, "sigma " + std::to_string(s.sigma_next).substr(0, 6));
  };
  auto res = generate(pipe, o);
  // with one batch, the time after the last step callback is the VAE decode
  const double decode_s = std::chrono::duration<double>(Clock::now() - last).count();
  progress.finish();
  if (a.timings) {
    std::ostringstream js;
    js << "{\"load_s\": " << load_s << ", \"step_s\": [";
    for (size_t i = 0; i < step_s.size(); ++i) js << (i ? ", " : "") << step_s[i];
    js << "], \"decode_s\": " << decode_s << ", \"peak_rss_gb\": {\"load\": " << peak_load_gb
       << ", \"steps\": " << peak_steps_gb << ", \"decode\": " << static_cast<double>(peak_rss_bytes()) * gb << "}}";
    std::fprintf(stderr, "timings %s\n", js.str().c_str());
  }
  if (kind == OutKind::Raw) {
    safetensors::save(out, {{"samples", res.samples}, {"latents", res.latents}, {"noise", res.noise}},
                      {{"parameters", sd_generation_parameters(pipe, o, 0)}});
  } else if (kind == OutKind::Grid) {
    int per_row = nrow > 0 ? nrow : static_cast<int>(std::ceil(std::sqrt(static_cast<double>(o.n))));
    auto img = o.n == 1 ? res.samples[0].clamp(-1, 1) : make_grid(res.samples.clamp(-1, 1), per_row, 2, 1.0);
    std::string params = sd_generation_parameters(pipe, o, 0);
    if (o.n > 1)
      params += "\nGrid: " + std::to_string(o.n) + " images, seeds " + std::to_string(o.seed) + ".." +
                std::to_string(o.seed + static_cast<uint64_t>(o.n) - 1) + ", " + std::to_string(per_row) + " per row";
    write_png(out, to_image(img), {{"parameters", params}});
  } else {
    fs::create_directories(out);
    for (int i = 0; i < o.n; ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "%05d-%llu.png", i, static_cast<unsigned long long>(o.seed + i));
      write_png((fs::path(out) / name).string(), to_image(res.samples[i].clamp(-1, 1)),
                {{"parameters", sd_generation_parameters(pipe, o, i)}});
    }
  }
  std::printf("wrote %s (%d image%s)\n", out.c_str(), o.n, o.n == 1 ? "" : "s");
}

}  // namespace diffuse::cli
