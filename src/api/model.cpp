// diffuse::Model: loading, model information, request defaults and validation.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "api/model_state.h"
#include "core/error.h"
#include "core/image.h"
#include "core/json_file.h"
#include "core/memory.h"
#include "core/runtime.h"
#include "core/strings.h"
#include "diffusion/sampler.h"
#include "diffusion/sigmas.h"
#include "pipelines/superres.h"
#include "pipelines/textual_inversion.h"

namespace fs = std::filesystem;

namespace diffuse {

std::string to_string(ModelKind kind) {
  switch (kind) {
    case ModelKind::StableDiffusion:
      return "stable-diffusion";
    case ModelKind::ClassConditional:
      return "class-conditional";
    case ModelKind::Unconditional:
      return "unconditional";
  }
  return "unknown";
}

namespace {

torch::Dtype dtype_of(const std::string& s) {
  if (s == "fp16") return torch::kFloat16;
  if (s == "bf16") return torch::kBFloat16;
  return torch::kFloat32;
}

bool is_sd_path(const std::string& path) {
  if (fs::is_regular_file(path)) return true;  // single files are Stable Diffusion checkpoints
  return SDPipeline::is_sd_folder(path);
}

// generation_config.json: {"sampler", "schedule", "steps", "guidance", "guide_model",
// "guide_unconditional", "width", "height", "n", ...}: any GenerationRequest field.
GenerationRequest read_defaults(const std::string& dir) {
  const fs::path f = fs::path(dir) / "generation_config.json";
  if (!fs::is_regular_file(f)) return {};
  std::ifstream in(f);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  GenerationRequest d;
  try {
    d = GenerationRequest::from_json(text);
  } catch (const RequestError& e) {
    throw Error(f.string() + ": " + e.what());
  }
  if (!d.guide_model.empty() && fs::path(d.guide_model).is_relative())
    d.guide_model = fs::weakly_canonical(fs::path(dir) / d.guide_model).string();
  return d;
}

}  // namespace

void Model::Impl::load_sd(const std::string& dtype, const std::string& weights) {
  sd.reset();
  return_large_frees_to_os();
  const SDComponents parts = options.one_shot ? SDComponents{false, false, false} : SDComponents{};
  sd = std::make_unique<SDPipeline>(diffuse::load_sd(path, parse_device(options.device), dtype_of(dtype),
                                                     options.text_encoder, options.prediction, options.model_config,
                                                     weights == "int8", parts));
  sd_dtype = dtype;
  sd_weights = weights;
  sd_loras.clear();
  if (options.one_shot) return;
  if (!options.vae.empty()) replace_vae(*sd, options.vae);
  for (const auto& f : options.embeddings) embeddings_loaded.push_back(load_embedding(*sd, f));
}

void Model::Impl::stage_sd(const SDComponents& want, const GenerateHooks& hooks) {
  if (!options.one_shot) return;
  release_components(*sd, want);
  return_large_frees_to_os();
  const SDComponents have = sd->loaded();
  struct Part {
    const char* name;
    SDComponents only;
    bool missing;
  };
  for (const Part& part :
       {Part{"text encoders", {true, false, false}, options.text_encoder && want.text_encoders && !have.text_encoders},
        Part{"unet", {false, true, false}, want.unet && !have.unet},
        Part{"vae", {false, false, true}, want.vae && !have.vae}}) {
    if (!part.missing) continue;
    const auto start = std::chrono::steady_clock::now();
    merge_components(*sd, diffuse::load_sd(path, parse_device(options.device), dtype_of(sd_dtype), options.text_encoder,
                                           options.prediction, options.model_config, sd_weights == "int8", part.only));
    if (part.only.vae && !options.vae.empty()) replace_vae(*sd, options.vae);
    if (part.only.text_encoders)
      for (const auto& f : options.embeddings) embeddings_loaded.push_back(load_embedding(*sd, f));
    if (hooks.loaded)
      hooks.loaded(part.name, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  if (!want.unet || !want.text_encoders) sd_loras.clear();  // merged into what was released
  // The VAE alone (the decode) converts no weights block by block: let the heap reuse its blocks.
  if (!want.text_encoders && !want.unet && want.vae) reuse_large_frees();
}

void Model::Impl::prepare_sd(const std::string& dtype, const std::string& weights, const std::vector<LoraSpec>& loras,
                             const GenerateHooks& hooks, const SDComponents& want) {
  auto same = [&] {
    if (loras.size() != sd_loras.size()) return false;
    for (size_t i = 0; i < loras.size(); ++i)
      if (loras[i].path != sd_loras[i].path || loras[i].weight != sd_loras[i].weight) return false;
    return true;
  };
  if (!sd || dtype != sd_dtype || weights != sd_weights || (!sd_loras.empty() && !same())) load_sd(dtype, weights);
  stage_sd(want, hooks);
  if (!same()) {
    for (const auto& s : loras) {
      const auto rep = apply_lora_file(*sd, s);
      if (hooks.message)
        hooks.message("lora " + s.path + " (weight " + std::to_string(s.weight).substr(0, 6) +
                      "): " + std::to_string(rep.unet_layers) + " UNet and " + std::to_string(rep.text_layers) +
                      " text-encoder layers");
    }
    sd_loras = loras;
  }
}

std::shared_ptr<const PixelPipeline> Model::Impl::guide(const std::string& p) {
  auto it = guides.find(p);
  if (it != guides.end()) return it->second;
  if (is_sd_path(p)) throw RequestError("guide_model", "a Stable Diffusion model cannot guide this model");
  std::shared_ptr<PixelPipeline> g;
  try {
    g = std::make_shared<PixelPipeline>(PixelPipeline::load(p, pixel->device));
    check_guide(*pixel, *g);
  } catch (const RequestError&) {
    throw;
  } catch (const Error& e) {
    throw RequestError("guide_model", e.what());
  }
  guides[p] = g;
  return g;
}

Model Model::load(const std::string& path, const LoadOptions& options) {
  Model m;
  m.impl_ = std::make_shared<Impl>();
  Impl& s = *m.impl_;
  s.path = path;
  s.options = options;
  if (!fs::exists(path)) throw Error(path + ": model not found");
  if (is_superres_folder(path))
    throw Error(path + ": a super-resolution model; it upscales images (diffuse::Upscaler, diffuse upscale)");
  auto& info = s.info;
  info.path = path;
  info.name = fs::path(path).filename().string();
  if (info.name.empty()) info.name = fs::path(path).parent_path().filename().string();
  if (ends_with(info.name, ".safetensors")) info.name.resize(info.name.size() - 12);
  if (fs::is_directory(path)) info.defaults = read_defaults(path);
  const torch::Device device = parse_device(options.device);
  s.dtype = resolve_dtype(options.dtype, device);
  if (is_sd_path(path)) {
    if (!options.weights.empty() && options.weights != "int8")
      throw RequestError("weights", "must be int8, or empty for the weights as stored");
    s.load_sd(s.dtype, options.weights);
    info.kind = ModelKind::StableDiffusion;
    info.network = "UNet2DConditionModel";
    info.latent = true;
    info.inpainting = s.sd->is_inpaint_model();
    info.architecture = s.sd->architecture();
    info.width = info.height = s.sd->default_size();
    info.channels = 3;
    info.size_step = 8;
  } else {
    s.pixel = std::make_unique<PixelPipeline>(PixelPipeline::load(path, device));
    if (s.dtype != "fp32" && s.dtype != "bf16") s.dtype = resolve_dtype("auto", device);  // fp16 is SD's only
    const auto& p = *s.pixel;
    info.kind = p.class_conditional() ? ModelKind::ClassConditional : ModelKind::Unconditional;
    info.network = p.net.is_dit() ? "DiTTransformer2DModel" : "UNet2DModel";
    info.latent = p.latent();
    info.classes = p.class_names;
    info.width = info.height = p.image_size();
    info.channels = p.channels();
    info.size_step = p.size_step();
  }
  return m;
}

const ModelInfo& Model::info() const { return impl_->info; }

GenerationRequest Model::resolve(const GenerationRequest& request) const {
  const ModelInfo& info = impl_->info;
  const GenerationRequest& d = info.defaults;
  const bool sd = info.kind == ModelKind::StableDiffusion;
  GenerationRequest r = request;
  if (!d.guide_model.empty() && r.guide_model == fs::path(d.guide_model).filename().string())
    r.guide_model = d.guide_model;  // the recommended guide by name (as infotexts carry it)
  if (r.sampler.empty()) r.sampler = d.sampler;
  if (r.sampler.empty()) r.sampler = sd ? impl_->sd->scheduler_class : "dpm++2m";
  try {  // canonical name; an A1111 name such as "DPM++ 2M Karras" also names the schedule
    std::string hint;
    r.sampler = find_sampler(r.sampler, &hint).name;
    if (r.schedule.empty() && r.sigmas.empty()) r.schedule = hint;
  } catch (const Error&) {
    // validate() names the sampler
  }
  if (r.schedule.empty() && r.sigmas.empty() && request.sampler.empty()) r.schedule = d.schedule;
  if (!r.steps) r.steps = d.steps ? d.steps : 20;
  if (r.dtype == "auto") r.dtype = impl_->dtype;
  // diffusers' defaults: 7.5 for SD 1.x / 2.x, 5 for SDXL
  if (!r.guidance) r.guidance = d.guidance ? d.guidance : (sd ? (impl_->sd->is_xl() ? 5.0 : 7.5) : 1.0);
  if (r.guide_model.empty() && !sd && !request.guidance) {
    // the recommended guide goes with the recommended guidance scale
    r.guide_model = d.guide_model;
    if (!r.guide_unconditional) r.guide_unconditional = d.guide_unconditional;
  }
  if (!r.guide_model.empty() && !r.guide_unconditional) r.guide_unconditional = false;
  if (!r.n) r.n = d.n ? d.n : (sd ? 1 : 8);
  if (!r.batch_size) r.batch_size = d.batch_size ? d.batch_size : (sd ? 1 : 64);
  if (!r.eta && d.eta) r.eta = d.eta;
  if (r.width == 0 && r.height == 0 && r.init_image.empty()) {
    r.width = d.width > 0 ? d.width : info.width;
    r.height = d.height > 0 ? d.height : info.height;
  }
  const bool inpainting = !r.mask.empty() || r.outpaint != std::array<int, 4>{0, 0, 0, 0};
  if (inpainting && r.inpaint_method.empty()) r.inpaint_method = sd ? "blend" : "repaint";
  return r;
}

std::vector<FieldError> Model::validate(const GenerationRequest& request) const {
  std::vector<FieldError> e = request.validate();
  for (auto& x : check_limits(request, RequestLimits::sanity())) e.push_back(x);
  const ModelInfo& info = impl_->info;
  auto bad = [&](const char* field, const std::string& msg) { e.push_back({field, msg}); };
  const std::string kind = to_string(info.kind);
  if (!impl_->options.allow_paths) {
    for (const auto& l : request.loras)
      if (l.name.find_first_of("/\\") != std::string::npos || l.name.find("..") != std::string::npos)
        bad("loras", "'" + l.name + "' is not a LoRA name (a file name without folders)");
  }
  if (info.kind == ModelKind::StableDiffusion) {
    if (!request.class_label.empty()) bad("class", "Stable Diffusion models take a prompt, not a class");
    if (!request.guide_model.empty())
      bad("guide_model", "autoguidance is for class-conditional and unconditional models");
    if (request.width % 8 != 0) bad("width", "must be a multiple of 8");
    if (request.height % 8 != 0) bad("height", "must be a multiple of 8");
    if (request.inpaint_method == "repaint")
      bad("inpaint_method", "RePaint is for class-conditional and unconditional models (SD blends)");
    if (!request.invert_from.empty()) bad("invert_from", "applies to class-conditional models");
    const bool xl = impl_->sd->is_xl();
    const std::string only_xl = "applies to SDXL models only (this model is " + info.architecture + ")";
    if (!xl) {
      if (request.original_size != std::array<int, 2>{0, 0}) bad("original_size", only_xl);
      if (request.crop_coords != std::array<int, 2>{0, 0}) bad("crop_coords", only_xl);
      if (request.target_size != std::array<int, 2>{0, 0}) bad("target_size", only_xl);
      if (request.negative_original_size != std::array<int, 2>{0, 0}) bad("negative_original_size", only_xl);
      if (request.negative_crop_coords != std::array<int, 2>{0, 0}) bad("negative_crop_coords", only_xl);
      if (request.negative_target_size != std::array<int, 2>{0, 0}) bad("negative_target_size", only_xl);
    }
    if (!request.refiner.empty() && (!xl || impl_->sd->requires_aesthetics_score))
      bad("refiner", "a refiner continues an SDXL base model (this model is " + info.architecture + ")");
    if (!request.refiner.empty() && !impl_->options.allow_paths && !impl_->options.resolve_guide)
      bad("refiner", "no refiner models are available here");
    if (!impl_->sd->requires_aesthetics_score) {
      const std::string only_refiner = "applies to SDXL refiners only (this model is " + info.architecture + ")";
      if (request.aesthetic_score) bad("aesthetic_score", only_refiner);
      if (request.negative_aesthetic_score) bad("negative_aesthetic_score", only_refiner);
    } else {
      if (request.target_size != std::array<int, 2>{0, 0})
        bad("target_size", "an SDXL refiner is conditioned on the aesthetic score, not on a target size");
      if (request.init_image.empty())
        bad("init_image",
            "this model is an SDXL refiner: it refines an image (img2img, inpainting) and cannot draw from noise; "
            "use an SDXL base model for text-to-image");
    }
    return e;
  }
  const std::string only_sd = "applies to Stable Diffusion models only (this model is " + kind + ")";
  if (request.original_size != std::array<int, 2>{0, 0}) bad("original_size", only_sd);
  if (request.crop_coords != std::array<int, 2>{0, 0}) bad("crop_coords", only_sd);
  if (request.target_size != std::array<int, 2>{0, 0}) bad("target_size", only_sd);
  if (request.negative_original_size != std::array<int, 2>{0, 0}) bad("negative_original_size", only_sd);
  if (request.negative_crop_coords != std::array<int, 2>{0, 0}) bad("negative_crop_coords", only_sd);
  if (request.negative_target_size != std::array<int, 2>{0, 0}) bad("negative_target_size", only_sd);
  if (request.aesthetic_score) bad("aesthetic_score", only_sd);
  if (!request.refiner.empty()) bad("refiner", only_sd);
  if (request.negative_aesthetic_score) bad("negative_aesthetic_score", only_sd);
  if (info.kind == ModelKind::Unconditional) {
    if (!request.prompt.empty()) bad("prompt", "this model is unconditional: it takes no prompt");
    if (!request.class_label.empty()) bad("class", "this model is unconditional: it has no classes");
  } else {
    const std::string& label = request.class_label.empty() ? request.prompt : request.class_label;
    if (!request.class_label.empty() && !request.prompt.empty())
      bad("prompt", "give the class in 'class' or in 'prompt', not both");
    else if (!label.empty()) {
      try {
        impl_->pixel->class_index(label);
      } catch (const Error& err) {
        bad(request.class_label.empty() ? "prompt" : "class", err.what());
      }
    }
  }
  if (!request.invert_from.empty()) {
    if (info.kind == ModelKind::Unconditional)
      bad("invert_from", "this model is unconditional: it has no classes to invert from");
    else {
      try {
        impl_->pixel->class_index(request.invert_from);
      } catch (const Error& err) {
        bad("invert_from", err.what());
      }
    }
  }
  if (!request.negative_prompt.empty()) bad("negative_prompt", only_sd);
  const int step = impl_->pixel->size_step();
  for (auto [field, v] : {std::pair<const char*, int>{"width", request.width}, {"height", request.height}})
    if (v % step != 0)
      bad(field, "must be a multiple of " + std::to_string(step) + " for this model (it draws " +
                     std::to_string(info.width) + "x" + std::to_string(info.height) + " images)");
  if (request.inpaint_only_masked) bad("inpaint_only_masked", only_sd);
  if (!request.loras.empty()) bad("loras", only_sd);
  if (request.clip_skip != 0) bad("clip_skip", only_sd);
  if (request.dtype == "fp16") bad("dtype", "fp16 is for Stable Diffusion models; this model computes in fp32 or bf16");
  if (!request.weights.empty()) bad("weights", only_sd);
  if (request.vae_tiling || request.vae_tile_size != 0) bad("vae_tiling", only_sd);
  if (request.guide_unconditional.value_or(false) && request.guide_model.empty())
    bad("guide_unconditional", "needs guide_model");
  return e;
}

GenerationResult Model::generate(const GenerationRequest& request, const GenerateHooks& hooks) const {
  auto errors = validate(request);
  if (!errors.empty()) throw RequestError(std::move(errors));
  GenerationRequest r = resolve(request);
  errors = validate(r);  // the model's recommended settings are checked too
  if (!errors.empty()) throw RequestError(std::move(errors));
  if (r.seed < 0) r.seed = static_cast<int64_t>(std::random_device{}());
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (hooks.cancel.cancelled()) throw Cancelled();
  return impl_->info.kind == ModelKind::StableDiffusion ? generate_sd(*impl_, r, hooks)
                                                        : generate_pixel(*impl_, r, hooks);
}

int64_t Model::weight_bytes() const {
  int64_t bytes = 0;
  auto add = [&](const torch::nn::Module& m) {
    for (const auto& p : m.parameters()) bytes += p.numel() * static_cast<int64_t>(p.element_size());
  };
  if (impl_->sd) {
    add(*impl_->sd->unet);
    add(*impl_->sd->vae);
    if (impl_->sd->text) add(*impl_->sd->text->model);
    if (impl_->sd->text_2) add(*impl_->sd->text_2->model);
  }
  if (impl_->pixel) {
    add(impl_->pixel->net.module());
    if (impl_->pixel->vae) add(*impl_->pixel->vae);
  }
  return bytes;
}

std::vector<SamplerInfo> list_samplers() {
  std::vector<SamplerInfo> out;
  for (const auto& d : samplers()) out.push_back({d.name, d.summary, d.a1111, d.order, d.stochastic});
  return out;
}

std::vector<ScheduleInfo> list_schedules() {
  std::vector<ScheduleInfo> out;
  for (const auto& [name, summary, fn] : sigma_schedules()) out.push_back({name, summary});
  return out;
}

std::string encode_image(const torch::Tensor& chw, const std::string& format, const std::string& parameters) {
  Image img = to_image(chw.detach().to(torch::kCPU).to(torch::kFloat32).clamp(-1, 1));
  if (format == "jpeg" || format == "jpg") return encode_jpeg(img.channels == 4 ? convert_channels(img, 3) : img);
  if (format != "png") throw Error("output_format: must be png or jpeg");
  std::map<std::string, std::string> text;
  if (!parameters.empty()) text["parameters"] = parameters;
  return encode_png(img, text);
}

torch::Tensor decode_image(const std::string& bytes, int channels, const std::string& what) {
  return to_tensor(convert_channels(diffuse::decode_image(bytes, what), channels));
}

std::string png_parameters(const std::string& png_bytes) {
  auto text = png_text_chunks(png_bytes, "image");
  auto it = text.find("parameters");
  return it == text.end() ? "" : it->second;
}

}  // namespace diffuse
