#include "request_flags.h"

#include <cmath>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "core/image.h"

namespace diffuse::cli {

namespace {

struct FieldFlag {
  const char* field;
  const char* flag;
};
// Request and load-option fields and the flags that set them.
const FieldFlag kFieldFlags[] = {
    {"prompt", "--prompt"},
    {"negative_prompt", "--negative-prompt"},
    {"class", "--class"},
    {"sampler", "--sampler"},
    {"schedule", "--schedule"},
    {"sigmas", "--sigmas"},
    {"steps", "--steps"},
    {"guidance", "--guidance"},
    {"guidance_rescale", "--cfg-rescale"},
    {"guidance_interval", "--guidance-interval"},
    {"guide_model", "--guide-model"},
    {"guide_unconditional", "--guide-unconditional"},
    {"seed", "--seed"},
    {"rng", "--rng"},
    {"eta", "--eta"},
    {"s_noise", "--s-noise"},
    {"width", "--width"},
    {"height", "--height"},
    {"n", "--num"},
    {"batch_size", "--batch-size"},
    {"init_image", "--image"},
    {"strength", "--strength"},
    {"mask", "--mask"},
    {"mask_blur", "--mask-blur"},
    {"mask_invert", "--mask-invert"},
    {"inpaint_only_masked", "--only-masked"},
    {"inpaint_only_masked_padding", "--only-masked-padding"},
    {"outpaint", "--outpaint"},
    {"inpaint_method", "--inpaint-method"},
    {"jump_length", "--jump-length"},
    {"jump_n_sample", "--jump-n-sample"},
    {"invert_from", "--invert-from"},
    {"loras", "--lora"},
    {"clip_skip", "--clip-skip"},
    {"dtype", "--dtype"},
    {"weights", "--weights"},
    {"vae_tiling", "--vae-tiling"},
    {"vae_tile_size", "--vae-tile-size"},
    {"output_format", "--out"},
    {"negative_original_size", "--negative-original-size"},
    {"negative_crop_coords", "--negative-crop-coords"},
    {"negative_target_size", "--negative-target-size"},
    {"original_size", "--original-size"},
    {"crop_coords", "--crop-coords"},
    {"target_size", "--target-size"},
    {"negative_aesthetic_score", "--negative-aesthetic-score"},
    {"aesthetic_score", "--aesthetic-score"},
    {"refiner_switch", "--refiner-switch"},
    {"refiner", "--refiner"},
    {"image", "--image"},
    {"sigma", "--sigma"},
    {"mode", "--mode"},
    {"frames", "--frames"},
    {"fps", "--fps"},
    {"frame_size", "--frame-size"},
    {"to_class", "--to-class"},
    {"to_seed", "--to-seed"},
    {"embeddings", "--embedding"},
    {"embeddings_dir", "--embeddings-dir"},
    {"lora_dir", "--lora-dir"},
    {"device", "--device"},
    {"vae", "--vae"},
    {"models_dir", "--models-dir"},
    {"models", "--model"},
    {"host", "--host"},
    {"port", "--port"},
    {"image", "--image"},
    {"scale", "--scale"},
    {"tile_overlap", "--tile-overlap"},
    {"convert_channels", "--convert"},
};

// The bytes of an image file given for `field`, checked to decode (errors name the file).
std::string read_image_file(const std::string& path, const char* field) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw RequestError(field, path + ": cannot open");
  std::ostringstream s;
  s << f.rdbuf();
  try {
    decode_image(s.str(), 1, path);
  } catch (const Error& e) {
    throw RequestError(field, e.what());
  }
  return s.str();
}

}  // namespace

std::string fields_as_flags(const std::string& message) {
  std::string out = message;
  for (const auto& ff : kFieldFlags) {
    const std::string field = ff.field;
    // At the start of the message or of a "; "-separated problem, and anywhere for names with '_'.
    const std::string pattern = field.find('_') != std::string::npos ? "(^|[^A-Za-z0-9_-])" + field + "(?![A-Za-z0-9_])"
                                                                     : "(^|; )" + field + "(?=[: ])";
    out = std::regex_replace(out, std::regex(pattern), std::string("$1") + ff.flag);
  }
  return out;
}

void add_request_options(CLI::App* cmd, RequestArgs* a) {
  GenerationRequest& r = a->req;
  auto add = [&](CLI::Option* o, const char* field) {
    a->fields.emplace_back(o, field);
    return o;
  };
  add(cmd->add_option("-n,--num", a->n, "Number of images (Stable Diffusion default 1, other models 8)")
          ->check(CLI::PositiveNumber),
      "n");
  add(cmd->add_option("--class", r.class_label, "Class name or index (default: rows of every class)"), "class");
  add(cmd->add_option("--prompt,-p", r.prompt, "Prompt (Stable Diffusion; a class name for class models)"), "prompt");
  add(cmd->add_option("--negative-prompt", r.negative_prompt, "Negative prompt (Stable Diffusion)"), "negative_prompt");
  add(cmd->add_option(
          "--guidance,--cfg", a->guidance,
          "Guidance scale (1 = off; default: the model's recommended, else 7.5 for Stable Diffusion, 5 for SDXL, "
          "1)"),
      "guidance");
  add(cmd->add_option("--cfg-rescale", r.guidance_rescale, "CFG-rescale factor phi (0 = off)"), "guidance_rescale");
  add_guidance_interval_option(cmd, &a->guidance_lo, &a->guidance_hi);
  for (auto* o : cmd->get_options())
    if (o->get_name() == "--guidance-interval") add(o, "guidance_interval");
  auto* guide = add(cmd->add_option("--guide-model", r.guide_model,
                                    "Autoguidance (Karras et al. 2024): guide with this weaker model folder instead "
                                    "of the unconditional branch; --guidance is its scale")
                        ->type_name("DIR"),
                    "guide_model");
  add(cmd->add_flag("--guide-unconditional", a->guide_unconditional,
                    "Run the --guide-model on its null class (CFG with the weaker model as the unconditional branch)")
          ->needs(guide),
      "guide_unconditional");
  add(cmd->add_option("--sampler", r.sampler,
                      "Sampler (see `diffuse samplers`; default: the model's recommended, or its scheduler)"),
      "sampler");
  add(cmd->add_option("--schedule", r.schedule, "Sigma schedule (default: the sampler's; see `diffuse samplers`)"),
      "schedule");
  add(cmd->add_option("--sigmas", a->sigmas, "Custom descending sigmas a,b,c,..."), "sigmas");
  add(cmd->add_option("--steps", a->steps, "Sampling steps (default 20)"), "steps");
  add(cmd->add_option("--eta", a->eta, "Noise of ancestral / DDIM steps"), "eta");
  add(cmd->add_option("--s-noise", r.s_noise, "Noise multiplier of stochastic samplers"), "s_noise");
  add(cmd->add_option("--seed", r.seed, "Seed of image 0 (image i uses seed + i; default 0; -1 = random)"), "seed");
  add(cmd->add_option("--rng", r.rng, "Noise: cpu (torch CPU generator, as diffusers) or philox (A1111 GPU-style)"),
      "rng");
  add(cmd->add_option("--batch-size", a->batch, "Images per forward pass (Stable Diffusion default 1, others 64)")
          ->check(CLI::PositiveNumber),
      "batch_size");
  add(cmd->add_option("--width", r.width, "Image width (default: the model's, or the init image's)"), "width");
  add(cmd->add_option("--height", r.height, "Image height (default: the model's, or the init image's)"), "height");
  add(cmd->add_option("--image", a->init_image_path, "img2img / inpainting / class transfer: init image (PNG or JPEG)"),
      "init_image");
  add(cmd->add_option("--strength", r.strength, "img2img: denoising strength in [0, 1] (default 0.8)"), "strength");
  add(cmd->add_option("--mask", a->mask_path, "Inpainting: mask image, white = repaint"), "mask");
  add(cmd->add_option("--mask-blur", r.mask_blur, "Inpainting: Gaussian blur of the mask in pixels"), "mask_blur");
  add(cmd->add_flag("--mask-invert", r.mask_invert, "Inpainting: repaint the black part of the mask"), "mask_invert");
  add(cmd->add_flag("--only-masked", r.inpaint_only_masked,
                    "Inpainting: work on a crop around the mask, resized to --width/--height"),
      "inpaint_only_masked");
  add(cmd->add_option("--only-masked-padding", r.inpaint_only_masked_padding,
                      "Inpainting: context pixels around the mask (default 32)"),
      "inpaint_only_masked_padding");
  add(cmd->add_option("--outpaint", a->outpaint, "Outpainting: pad --image by L,T,R,B pixels and paint the new area"),
      "outpaint");
  add(cmd->add_option("--inpaint-method", r.inpaint_method,
                      "Inpainting with class / unconditional models: repaint (default) or blend (faster)"),
      "inpaint_method");
  add(cmd->add_option("--jump-length", r.jump_length, "RePaint: steps per resampling jump (default 10)"),
      "jump_length");
  add(cmd->add_option("--jump-n-sample", r.jump_n_sample, "RePaint: passes per jump, 1 = no resampling (default 10)"),
      "jump_n_sample");
  add(cmd->add_option("--invert-from", r.invert_from,
                      "Class transfer: the class of --image; DDIM-inverted under it, regenerated as --class"),
      "invert_from");
  add(cmd->add_option("--lora", a->loras, "LoRA file FILE.safetensors[:weight] (repeatable)"), "loras");
  add(cmd->add_option("--clip-skip", r.clip_skip, "Text-encoder layers skipped at the end (diffusers clip_skip)"),
      "clip_skip");
  add(cmd->add_option(
          "--dtype", r.dtype,
          "Compute dtype: auto (bf16 on CPUs with AVX-512 BF16 / AMX, else fp32), fp32, bf16 or fp16 (SD only)"),
      "dtype");
  add(cmd->add_option("--weights", r.weights,
                      "UNet / text-encoder weight storage: int8 (8-bit weights, per-channel scales, dequantised "
                      "layer by layer into --dtype); default: as the file stores them"),
      "weights");
  add(cmd->add_flag("--vae-tiling", r.vae_tiling, "Encode / decode with the VAE in overlapping tiles (large images)"),
      "vae_tiling");
  add(cmd->add_option("--vae-tile-size", r.vae_tile_size, "VAE tile size in pixels (default: the VAE's, 512)"),
      "vae_tile_size");
  add(cmd->add_option("--original-size", a->original_size,
                      "SDXL micro-conditioning: original image size H,W (default: the output size)"),
      "original_size");
  add(cmd->add_option("--crop-coords", a->crop_coords, "SDXL micro-conditioning: crop top-left TOP,LEFT (default 0,0)"),
      "crop_coords");
  add(cmd->add_option("--target-size", a->target_size,
                      "SDXL micro-conditioning: target size H,W (default: the output size)"),
      "target_size");
  add(cmd->add_option("--negative-original-size", a->negative_original_size,
                      "SDXL: original size H,W of the unconditional branch (with --negative-target-size)"),
      "negative_original_size");
  add(cmd->add_option("--negative-crop-coords", a->negative_crop_coords,
                      "SDXL: crop TOP,LEFT of the unconditional branch (default 0,0)"),
      "negative_crop_coords");
  add(cmd->add_option("--negative-target-size", a->negative_target_size,
                      "SDXL: target size H,W of the unconditional branch (with --negative-original-size)"),
      "negative_target_size");
  add(cmd->add_option("--aesthetic-score", a->aesthetic_score, "SDXL refiners: aesthetic score (default 6)"),
      "aesthetic_score");
  add(cmd->add_option("--negative-aesthetic-score", a->negative_aesthetic_score,
                      "SDXL refiners: aesthetic score of the unconditional branch (default 2.5)"),
      "negative_aesthetic_score");
  add(cmd->add_option("--refiner", r.refiner,
                      "SDXL: a refiner model (folder or .safetensors) that runs the last steps from the base's latents")
          ->type_name("MODEL"),
      "refiner");
  add(cmd->add_option("--refiner-switch", r.refiner_switch,
                      "SDXL: fraction of the schedule after which the refiner takes over (default 0.8)"),
      "refiner_switch");
  cmd->add_option("--params-from", a->params_from,
                  "Re-run the request stored in a PNG's parameters (flags given override its fields)")
      ->type_name("IMAGE.png");
  // Load options.
  cmd->add_option("--lora-dir", a->load.lora_dir, "Folder of NAME.safetensors for <lora:NAME:weight> in the prompt");
  cmd->add_option("--embedding", a->load.embeddings,
                  "Textual-inversion embedding .safetensors (repeatable; trigger: file name or tensor name)");
  cmd->add_option("--embeddings-dir", a->load.embeddings_dir,
                  "Folder of embeddings loaded when their file name occurs in the prompts");
  cmd->add_option("--prediction", a->load.prediction, "Single-file checkpoints: epsilon or v_prediction");
  cmd->add_option("--model-config", a->load.model_config,
                  "Single-file checkpoints: a diffusers pipeline folder whose component configs to use");
  cmd->add_option("--vae", a->load.vae,
                  "Stable Diffusion: VAE weights (AutoencoderKL folder or .safetensors, diffusers or LDM names) "
                  "replacing the model's, e.g. SDXL's fp16-fixed VAE");
  cmd->add_option("--device", a->load.device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_option("--latents", a->latents, "Starting latents: safetensors with tensor 'latents' (diffusers latents=)");
  cmd->add_option("--prompt-embeds", a->prompt_embeds,
                  "safetensors with 'prompt_embeds' and optionally 'negative_prompt_embeds' (SDXL: also "
                  "'pooled_prompt_embeds' and 'negative_pooled_prompt_embeds')");
}

GenerationRequest build_request(RequestArgs& a) {
  GenerationRequest r;
  r.seed = 0;  // reproducible by default on the command line
  if (!a.params_from.empty()) {
    std::string text;
    auto chunks = read_png_text(a.params_from);
    auto it = chunks.find("parameters");
    if (it == chunks.end()) throw Error("--params-from " + a.params_from + ": the PNG has no parameters");
    r = GenerationRequest::from_infotext(it->second);
    r.model.clear();
    r.n = 1;  // the parameters of one image
  }
  const GenerationRequest& f = a.req;
  for (auto& [o, field] : a.fields) {
    if (!o->count()) continue;
    const std::string k = field;
    if (k == "n")
      r.n = a.n;
    else if (k == "class")
      r.class_label = f.class_label;
    else if (k == "prompt")
      r.prompt = f.prompt;
    else if (k == "negative_prompt")
      r.negative_prompt = f.negative_prompt;
    else if (k == "guidance")
      r.guidance = a.guidance;
    else if (k == "guidance_rescale")
      r.guidance_rescale = f.guidance_rescale;
    else if (k == "guidance_interval")
      r.guidance_interval = {a.guidance_lo, a.guidance_hi};
    else if (k == "guide_model")
      r.guide_model = f.guide_model;
    else if (k == "guide_unconditional")
      r.guide_unconditional = a.guide_unconditional;
    else if (k == "sampler")
      r.sampler = f.sampler;
    else if (k == "schedule")
      r.schedule = f.schedule;
    else if (k == "sigmas") {
      r.sigmas.clear();
      std::istringstream in(a.sigmas);
      std::string tok;
      int idx = 0;
      while (std::getline(in, tok, ',')) {
        char* end = nullptr;
        const double v = std::strtod(tok.c_str(), &end);
        if (tok.empty() || !end || *end != 0)
          throw RequestError("sigmas", "entry " + std::to_string(idx) + " ('" + tok + "') is not a number");
        r.sigmas.push_back(v);
        ++idx;
      }
      if (!r.sigmas.empty() && r.sigmas.back() != 0) r.sigmas.push_back(0);
    } else if (k == "steps")
      r.steps = a.steps;
    else if (k == "eta")
      r.eta = a.eta;
    else if (k == "s_noise")
      r.s_noise = f.s_noise;
    else if (k == "seed")
      r.seed = f.seed;
    else if (k == "rng")
      r.rng = f.rng;
    else if (k == "batch_size")
      r.batch_size = a.batch;
    else if (k == "width")
      r.width = f.width;
    else if (k == "height")
      r.height = f.height;
    else if (k == "init_image")
      r.init_image = read_image_file(a.init_image_path, "init_image");
    else if (k == "strength")
      r.strength = f.strength;
    else if (k == "mask") {
      if (a.init_image_path.empty() && r.init_image.empty()) throw RequestError("mask", "needs init_image");
      r.mask = read_image_file(a.mask_path, "mask");
    } else if (k == "mask_blur")
      r.mask_blur = f.mask_blur;
    else if (k == "mask_invert")
      r.mask_invert = f.mask_invert;
    else if (k == "inpaint_only_masked")
      r.inpaint_only_masked = f.inpaint_only_masked;
    else if (k == "inpaint_only_masked_padding")
      r.inpaint_only_masked_padding = f.inpaint_only_masked_padding;
    else if (k == "outpaint") {
      char tail = 0;
      auto& p = r.outpaint;
      if (std::sscanf(a.outpaint.c_str(), "%d,%d,%d,%d%c", &p[0], &p[1], &p[2], &p[3], &tail) != 4)
        throw RequestError("outpaint", a.outpaint + ": expected L,T,R,B pixel counts");
    } else if (k == "inpaint_method")
      r.inpaint_method = f.inpaint_method;
    else if (k == "jump_length")
      r.jump_length = f.jump_length;
    else if (k == "jump_n_sample")
      r.jump_n_sample = f.jump_n_sample;
    else if (k == "invert_from")
      r.invert_from = f.invert_from;
    else if (k == "loras") {
      r.loras.clear();
      for (const auto& s : a.loras) {
        LoraWeight w{s, 1.0};
        const auto colon = s.rfind(':');
        if (colon != std::string::npos) {
          char* end = nullptr;
          const double v = std::strtod(s.c_str() + colon + 1, &end);
          if (end && *end == 0 && colon + 1 < s.size()) {
            w.name = s.substr(0, colon);
            w.weight = v;
          }
        }
        r.loras.push_back(w);
      }
    } else if (k == "clip_skip")
      r.clip_skip = f.clip_skip;
    else if (k == "dtype")
      r.dtype = f.dtype;
    else if (k == "weights")
      r.weights = f.weights;
    else if (k == "vae_tiling")
      r.vae_tiling = f.vae_tiling;
    else if (k == "vae_tile_size")
      r.vae_tile_size = f.vae_tile_size;
    else if (k.find("original_size") != std::string::npos || k.find("crop_coords") != std::string::npos ||
             k.find("target_size") != std::string::npos) {
      const std::map<std::string, std::pair<const std::string*, std::array<int, 2>*>> pairs = {
          {"original_size", {&a.original_size, &r.original_size}},
          {"crop_coords", {&a.crop_coords, &r.crop_coords}},
          {"target_size", {&a.target_size, &r.target_size}},
          {"negative_original_size", {&a.negative_original_size, &r.negative_original_size}},
          {"negative_crop_coords", {&a.negative_crop_coords, &r.negative_crop_coords}},
          {"negative_target_size", {&a.negative_target_size, &r.negative_target_size}}};
      const auto& [v, dst] = pairs.at(k);
      char tail = 0;
      if (std::sscanf(v->c_str(), "%d,%d%c", &(*dst)[0], &(*dst)[1], &tail) != 2)
        throw RequestError(
            field, *v + (k.find("crop") != std::string::npos ? ": expected TOP,LEFT" : ": expected HEIGHT,WIDTH"));
    } else if (k == "refiner")
      r.refiner = f.refiner;
    else if (k == "refiner_switch")
      r.refiner_switch = f.refiner_switch;
    else if (k == "aesthetic_score")
      r.aesthetic_score = a.aesthetic_score;
    else if (k == "negative_aesthetic_score")
      r.negative_aesthetic_score = a.negative_aesthetic_score;
  }
  a.load.dtype = r.dtype;
  a.load.weights = r.weights;
  return r;
}

}  // namespace diffuse::cli
