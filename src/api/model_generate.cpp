// diffuse::Model::generate for each kind of model: a resolved request -> pipeline options, progress
// with previews and cancellation, per-image seeds and parameters.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <sstream>

#include "api/model_state.h"
#include "core/error.h"
#include "core/image.h"
#include "core/runtime.h"
#include "pipelines/mask.h"
#include "pipelines/textual_inversion.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {

using Clock = std::chrono::steady_clock;

// A cheap latent -> RGB preview: a fixed linear map (Stable Diffusion's 4 latent channels), or
// the first channels for other latent spaces.
torch::Tensor latent_preview(const torch::Tensor& z) {
  auto x = z.detach().to(torch::kCPU).to(torch::kFloat32);
  if (x.size(0) == 4) {
    static const float kSdToRgb[4][3] = {
        {0.298f, 0.207f, 0.208f}, {0.187f, 0.286f, 0.173f}, {-0.158f, 0.189f, 0.264f}, {-0.184f, -0.271f, -0.473f}};
    auto m = torch::from_blob(const_cast<float*>(&kSdToRgb[0][0]), {4, 3}, torch::kFloat32);
    return torch::einsum("chw,cr->rhw", {x, m}).clamp(-1, 1);
  }
  auto rgb = x.size(0) >= 3 ? x.narrow(0, 0, 3) : x.narrow(0, 0, 1).expand({3, x.size(1), x.size(2)});
  return (rgb * 0.5).clamp(-1, 1);
}

// Counts steps over all batches and forwards progress, previews and cancellation.
struct Tracker {
  const GenerateHooks& hooks;
  int batches;
  bool latent;
  Clock::time_point start = Clock::now();
  int done = 0;

  int total = 0;  // steps over all batches; 0 = each run's own count times the batches

  StepCallback callback() {
    return [this](const StepInfo& s) {
      if (hooks.cancel.cancelled()) throw Cancelled();
      ++done;
      if (!hooks.progress) return;
      ProgressInfo p;
      p.step = done;
      p.total = total > 0 ? total : s.total * batches;
      p.sigma = s.sigma_next;
      p.elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();
      p.eta_s = p.elapsed_s / done * std::max(0, p.total - done);
      if (hooks.preview_every > 0 && (done % hooks.preview_every == 0 || done == p.total) && s.denoised.defined())
        p.preview = latent ? latent_preview(s.denoised[0]) : s.denoised[0].detach().to(torch::kCPU).clamp(-1, 1);
      hooks.progress(p);
    };
  }
};

std::string sigmas_csv(const std::vector<double>& v) {
  std::ostringstream o;
  o.precision(std::numeric_limits<double>::max_digits10);
  for (size_t i = 0; i < v.size(); ++i) o << (i ? "," : "") << v[i];
  return o.str();
}

// Batches this call computes: those of its shard.
int shard_batches(int n, int batch_size, const GenerateHooks& hooks) {
  if (hooks.shards < 1 || hooks.shard < 0 || hooks.shard >= hooks.shards)
    throw Error("shard " + std::to_string(hooks.shard) + " of " + std::to_string(hooks.shards) + ": out of range");
  const int batches = (n + std::max(1, batch_size) - 1) / std::max(1, batch_size);
  return std::max(1, (batches - hooks.shard + hooks.shards - 1) / hooks.shards);
}

// A run whose images hold NaN or infinities is an error, not a black image.
void check_finite(const torch::Tensor& images) {
  if (!torch::isfinite(images).all().item<bool>())
    throw std::runtime_error(
        "the model produced NaN or infinite values (with fp16 / bf16 weights try dtype fp32, or another sampler)");
}

// Per-image requests and parameters text of a finished run.
void describe(GenerationResult& res, const GenerationRequest& r, const std::string& model_name,
              const std::vector<std::string>& classes) {
  res.request = r;
  const int n = static_cast<int>(res.images.size(0));
  for (int i = 0; i < n; ++i) {
    GenerationRequest one = r;
    one.model = model_name;
    one.seed = r.seed + i;
    one.width = static_cast<int>(res.images.size(3));
    one.height = static_cast<int>(res.images.size(2));
    if (!classes.empty()) {
      one.class_label = classes[static_cast<size_t>(i)];
      one.prompt.clear();
    }
    one.guide_model = fs::path(r.guide_model).filename().string();  // a name, not a path on this disk
    res.seeds.push_back(one.seed);
    res.infotexts.push_back(one.to_infotext());
  }
}

// An init image or mask as a [1, channels, H, W] tensor in [-1, 1]. A colour image is refused
// for a greyscale model (grey images in RGB or RGBA files are fine); the mask's luminance is used.
torch::Tensor decode_input(const std::string& bytes, int channels, const char* field, bool is_mask = false) {
  Image img;
  try {
    img = decode_image(bytes, field);
  } catch (const Error& e) {
    throw RequestError(field, e.what());
  }
  if (channels == 1 && !is_mask && img.channels >= 3) {
    const size_t n = static_cast<size_t>(img.width) * img.height;
    for (size_t i = 0; i < n; ++i) {
      const uint8_t* p = img.data.data() + i * img.channels;
      if (p[0] != p[1] || p[1] != p[2])
        throw RequestError(field, "a colour image, but this model draws greyscale images (convert it to grey first)");
    }
  }
  return to_tensor(convert_channels(img, channels)).unsqueeze(0);
}

void check_same_size(const torch::Tensor& image, const torch::Tensor& mask) {
  if (image.size(2) != mask.size(2) || image.size(3) != mask.size(3))
    throw RequestError("mask", "its size " + std::to_string(mask.size(3)) + "x" + std::to_string(mask.size(2)) +
                                   " differs from init_image's " + std::to_string(image.size(3)) + "x" +
                                   std::to_string(image.size(2)));
}

// The request's SDXL refiner, loaded (or kept from the last request) in the request's dtype.
SDPipeline& load_refiner(Model::Impl& m, const GenerationRequest& r) {
  if (!m.sd->is_xl() || m.sd->requires_aesthetics_score)
    throw RequestError("refiner", "a refiner continues an SDXL base model");
  if (m.sd->is_inpaint_model()) throw RequestError("refiner", "not with a 9-channel inpainting model");
  const std::string path = m.options.resolve_guide ? m.options.resolve_guide(r.refiner)
                           : m.options.allow_paths ? r.refiner
                                                   : "";
  if (path.empty()) throw RequestError("refiner", "no model named '" + r.refiner + "'");
  if (!m.refiner || m.refiner_path != path || m.refiner_dtype != r.dtype || m.refiner_weights != r.weights) {
    m.refiner.reset();
    try {
      m.refiner = std::make_unique<SDPipeline>(load_sd(path, parse_device(m.options.device),
                                                       r.dtype == "bf16"   ? torch::kBFloat16
                                                       : r.dtype == "fp16" ? torch::kFloat16
                                                                           : torch::kFloat32,
                                                       true, "", "", r.weights == "int8"));
    } catch (const Error& e) {
      throw RequestError("refiner", e.what());
    }
    m.refiner_path = path;
    m.refiner_dtype = r.dtype;
    m.refiner_weights = r.weights;
  }
  SDPipeline& p = *m.refiner;
  if (!p.is_xl() || p.latent_channels() != m.sd->latent_channels() || p.is_inpaint_model())
    throw RequestError("refiner", r.refiner + " is " + p.architecture() + ", not an SDXL model that can refine");
  if (!p.has_text_encoder()) throw RequestError("refiner", r.refiner + " was loaded without its text encoder");
  return p;
}

}  // namespace

GenerationResult generate_sd(Model::Impl& m, const GenerationRequest& r, const GenerateHooks& hooks) {
  SDOptions o;
  o.n = *r.n;
  o.prompt = r.prompt;
  o.negative_prompt = r.negative_prompt;
  o.width = r.width;
  o.height = r.height;
  o.clip_skip = r.clip_skip;
  o.guidance = *r.guidance;
  o.cfg_rescale = r.guidance_rescale;
  o.guidance_sigma_lo = r.guidance_interval[0];
  o.guidance_sigma_hi = r.guidance_interval[1];
  o.sampler = r.sampler;
  o.schedule = r.schedule;
  o.sigmas = sigmas_csv(r.sigmas);
  o.steps = *r.steps;
  o.seed = static_cast<uint64_t>(r.seed);
  o.rng = r.rng;
  o.eta = r.eta ? *r.eta : NAN;
  o.s_noise = r.s_noise;
  o.batch_size = *r.batch_size;
  o.strength = r.strength;
  o.mask_blur = r.mask_blur;
  o.only_masked = r.inpaint_only_masked;
  o.only_masked_padding = r.inpaint_only_masked_padding;
  try {
    if (!r.init_image.empty()) o.image = decode_image(r.init_image, 3, "init_image").unsqueeze(0);
    if (!r.mask.empty()) {
      o.mask = (decode_image(r.mask, 1, "mask").unsqueeze(0) + 1) / 2;
      check_same_size(o.image, o.mask);
      if (r.mask_invert) o.mask = 1 - o.mask;
    }
  } catch (const RequestError&) {
    throw;
  } catch (const Error& e) {
    const std::string msg = e.what();
    throw RequestError(msg.rfind("mask", 0) == 0 ? "mask" : "init_image", msg);
  }
  const auto& op = r.outpaint;
  if (op != std::array<int, 4>{0, 0, 0, 0}) {
    std::tie(o.image, o.mask) = outpaint_pad(o.image, op[0], op[1], op[2], op[3]);
    o.strength = 1.0;
  }
  if (o.image.defined() && (o.width == 0 || o.height == 0)) {
    o.width = static_cast<int>(o.image.size(3));
    o.height = static_cast<int>(o.image.size(2));
    if (o.width % 8 || o.height % 8)
      throw RequestError("init_image", "its size " + std::to_string(o.width) + "x" + std::to_string(o.height) +
                                           " is not a multiple of 8: give width and height");
  }
  o.latents = hooks.latents;
  o.prompt_embeds = hooks.prompt_embeds;
  o.negative_prompt_embeds = hooks.negative_prompt_embeds;
  o.pooled_prompt_embeds = hooks.pooled_prompt_embeds;
  o.negative_pooled_prompt_embeds = hooks.negative_pooled_prompt_embeds;
  // SDXL micro-conditioning; {0, 0} sizes are the output size
  if (r.original_size != std::array<int, 2>{0, 0}) o.size_cond.original_size = r.original_size;
  if (r.crop_coords != std::array<int, 2>{0, 0}) o.size_cond.crop_coords = r.crop_coords;
  if (r.target_size != std::array<int, 2>{0, 0}) o.size_cond.target_size = r.target_size;
  if (r.negative_original_size != std::array<int, 2>{0, 0})
    o.size_cond.negative_original_size = r.negative_original_size;
  if (r.negative_crop_coords != std::array<int, 2>{0, 0}) o.size_cond.negative_crop_coords = r.negative_crop_coords;
  if (r.negative_target_size != std::array<int, 2>{0, 0}) o.size_cond.negative_target_size = r.negative_target_size;
  if (r.aesthetic_score) o.size_cond.aesthetic_score = *r.aesthetic_score;
  if (r.negative_aesthetic_score) o.size_cond.negative_aesthetic_score = *r.negative_aesthetic_score;

  // LoRAs from the request and from <lora:name:weight> tags in the prompts.
  const std::string& dir = m.options.lora_dir;
  std::vector<LoraSpec> loras;
  for (const auto& l : r.loras) {
    const bool is_path = m.options.allow_paths &&
                         (l.name.find('/') != std::string::npos || fs::path(l.name).extension() == ".safetensors");
    if (!is_path && dir.empty()) throw RequestError("loras", "'" + l.name + "': no LoRA folder is configured");
    const std::string path = is_path ? l.name : (fs::path(dir) / (l.name + ".safetensors")).string();
    if (!fs::is_regular_file(path)) throw RequestError("loras", "no LoRA named '" + l.name + "'");
    loras.push_back({path, l.weight});
  }
  try {
    for (std::string* p : {&o.prompt, &o.negative_prompt})
      for (auto& s : extract_prompt_loras(*p, dir)) loras.push_back(s);
  } catch (const Error& e) {
    throw RequestError("prompt", e.what());
  }
  // One-shot models load each component only while it is needed; LoRAs, refiners and init images
  // need the whole model.
  const bool staged = m.options.one_shot && loras.empty() && r.refiner.empty() && !o.image.defined();
  const SDComponents all;
  m.prepare_sd(r.dtype, r.weights, loras, hooks, staged ? SDComponents{true, false, false} : all);
  if (!m.options.embeddings_dir.empty()) {
    for (const auto& t : load_embeddings_for(*m.sd, m.options.embeddings_dir, {o.prompt, o.negative_prompt}))
      m.embeddings_loaded.push_back(t);
  }
  if (hooks.message)
    for (const auto& t : m.embeddings_loaded) hooks.message("embedding " + t);
  m.embeddings_loaded.clear();
  if (staged) {
    // the prompts' embeddings, then the UNet without the text encoders
    const PromptEmbeddings pe = encode_prompts(*m.sd, o);
    o.prompt_embeds = pe.cond;
    o.negative_prompt_embeds = pe.uncond;
    o.pooled_prompt_embeds = pe.cond_pooled;
    o.negative_pooled_prompt_embeds = pe.uncond_pooled;
    m.stage_sd({false, true, false}, hooks);
    o.decode = false;
  }
  SDPipeline& pipe = *m.sd;
  pipe.vae_tiling.enabled = r.vae_tiling || r.vae_tile_size > 0;
  pipe.vae_tiling.tile = r.vae_tile_size;

  o.shard = hooks.shard;
  o.shards = hooks.shards;
  const int batches = shard_batches(o.n, o.batch_size, hooks);
  Tracker t{hooks, batches, true};
  o.callback = t.callback();
  const auto start = Clock::now();
  SDResult sr;
  if (r.refiner.empty()) {
    sr = generate(pipe, o);
  } else {
    if (o.prompt_embeds.defined() || o.negative_prompt_embeds.defined())
      throw RequestError("refiner", "takes prompts: prompt embeddings fit the base model's text encoders only");
    SDPipeline& refiner = load_refiner(m, r);
    t.total = o.steps * batches;  // both models' steps
    SDOptions base = o;
    base.denoising_end = r.refiner_switch;
    const SDResult b = generate(pipe, base);
    SDOptions ref = o;  // the same prompts, seeds and sizes; the refiner's own text encoder
    ref.denoising_start = r.refiner_switch;
    ref.start_latents = b.x_end;
    ref.image = ref.mask = torch::Tensor();
    ref.strength = 1.0;
    sr = generate(refiner, ref);
    sr.noise = b.noise;
  }
  if (staged) {
    m.stage_sd({false, false, true}, hooks);  // the VAE without the UNet
    sr.samples = decode_samples(*m.sd, o, sr.latents);
  }
  if (m.options.one_shot) m.stage_sd({false, false, false}, hooks);
  GenerationResult res;
  res.images = sr.samples;
  res.latents = sr.latents;
  res.noise = sr.noise;
  res.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  check_finite(res.images);
  describe(res, r, m.info.name, {});
  return res;
}

GenerateOptions pixel_options(Model::Impl& m, const GenerationRequest& r) {
  GenerateOptions g;
  g.n = r.n.value_or(1);
  g.guidance = r.guidance.value_or(1.0);
  g.cfg_rescale = r.guidance_rescale;
  g.guidance_sigma_lo = r.guidance_interval[0];
  g.guidance_sigma_hi = r.guidance_interval[1];
  g.sampler = r.sampler;
  g.schedule = r.schedule;
  g.sigmas = sigmas_csv(r.sigmas);
  g.steps = r.steps.value_or(20);
  g.seed = static_cast<uint64_t>(r.seed);
  g.rng = r.rng;
  g.eta = r.eta ? *r.eta : NAN;
  g.s_noise = r.s_noise;
  g.batch_size = r.batch_size.value_or(64);
  g.dtype = r.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  if (!r.guide_model.empty()) {
    // the model's recommended guide is trusted; others are names (server) or paths (command line)
    const std::string path = r.guide_model == m.info.defaults.guide_model ? r.guide_model
                             : m.options.resolve_guide                    ? m.options.resolve_guide(r.guide_model)
                             : m.options.allow_paths                      ? r.guide_model
                                                                          : "";
    if (path.empty()) throw RequestError("guide_model", "no model named '" + r.guide_model + "'");
    g.guide = m.guide(path);
    g.guide_unconditional = r.guide_unconditional.value_or(false);
  }
  return g;
}

GenerationResult generate_pixel(Model::Impl& m, const GenerationRequest& r, const GenerateHooks& hooks) {
  const PixelPipeline& pipe = *m.pixel;
  GenerateOptions g = pixel_options(m, r);
  std::vector<std::string> names;
  if (pipe.class_conditional()) {
    const std::string& label = r.class_label.empty() ? r.prompt : r.class_label;
    if (!label.empty()) {
      g.classes.assign(static_cast<size_t>(g.n), pipe.class_index(label));
    } else {  // rows of every class
      const int k = static_cast<int>(pipe.class_names.size());
      const int per = std::max(1, g.n / k);
      for (int i = 0; i < g.n; ++i) g.classes.push_back(std::min(k - 1, i / per) % k);
    }
    for (int64_t c : g.classes) names.push_back(pipe.class_names[static_cast<size_t>(c)]);
  }
  if (!r.invert_from.empty()) g.invert_from = pipe.class_index(r.invert_from);
  g.width = r.width;
  g.height = r.height;
  if (!r.init_image.empty()) {
    g.image = decode_input(r.init_image, pipe.channels(), "init_image");
    g.strength = r.strength;
    if (!r.mask.empty()) {
      g.mask = (decode_input(r.mask, 1, "mask", true) + 1) / 2;
      check_same_size(g.image, g.mask);
      if (r.mask_invert) g.mask = 1 - g.mask;
    }
    const auto& op = r.outpaint;
    if (op != std::array<int, 4>{0, 0, 0, 0}) {
      std::tie(g.image, g.mask) = outpaint_pad(g.image, op[0], op[1], op[2], op[3]);
      g.strength = 1.0;
    }
    const int step = pipe.size_step();
    const int ih = static_cast<int>(g.image.size(2)), iw = static_cast<int>(g.image.size(3));
    if (g.width == 0 && g.height == 0 && (ih % step || iw % step))
      throw RequestError(op != std::array<int, 4>{0, 0, 0, 0} ? "outpaint" : "init_image",
                         "the image is " + std::to_string(iw) + "x" + std::to_string(ih) +
                             "; this model needs sides that are multiples of " + std::to_string(step) +
                             " (give width and height to resize it)");
    if (g.width == 0) g.width = iw;
    if (g.height == 0) g.height = ih;
    namespace F = torch::nn::functional;
    auto fit = [&](const torch::Tensor& t) {
      if (t.size(2) == g.height && t.size(3) == g.width) return t;
      return F::interpolate(t, F::InterpolateFuncOptions()
                                   .size(std::vector<int64_t>{g.height, g.width})
                                   .mode(torch::kBilinear)
                                   .align_corners(false));
    };
    g.image = fit(g.image);
    if (g.mask.defined()) g.mask = blur_mask(fit(g.mask), r.mask_blur).clamp(0, 1);
    g.inpaint = r.inpaint_method.empty() ? "repaint" : r.inpaint_method;
    g.jump_length = r.jump_length;
    g.jump_n_sample = r.jump_n_sample;
  }
  g.shard = hooks.shard;
  g.shards = hooks.shards;
  Tracker t{hooks, shard_batches(g.n, g.batch_size, hooks), pipe.latent()};
  g.callback = t.callback();
  const auto start = Clock::now();
  GenerateResult gr = generate(pipe, g);
  GenerationResult res;
  res.images = gr.samples;
  res.latents = gr.latents;
  res.noise = gr.noise;
  res.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  check_finite(res.images);
  describe(res, r, m.info.name, names);
  return res;
}

}  // namespace diffuse
