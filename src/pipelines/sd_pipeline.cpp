#include "pipelines/sd_pipeline.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/json_file.h"
#include "core/safetensors.h"
#include "diffusion/sigmas.h"
#include "models/model_io.h"
#include "nn/compute_dtype.h"
#include "nn/int8_weights.h"
#include "nn/skip_init.h"
#include "nn/state_dict.h"
#include "pipelines/batch.h"
#include "pipelines/image_noise.h"
#include "pipelines/mask.h"
#include "pipelines/prompt_weights.h"
#include "pipelines/sampling_plan.h"
#include "pipelines/scheduler_config.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {

// A component listed in model_index.json whose folder must exist.
void require_component(const std::string& dir, const nlohmann::json& index, const std::string& name) {
  if (!index.contains(name) || !index[name].is_array() || index[name].empty() || index[name][0].is_null())
    throw Error(dir + "/model_index.json: missing component '" + name + "'");
  if (!fs::is_directory(dir + "/" + name))
    throw Error(dir + ": missing component '" + name + "' (model_index.json lists it but " + dir + "/" + name +
                "/ does not exist)");
}

// libtorch 1.13 has no float16 matmul / convolution on the CPU.
void check_compute_dtype(torch::Device device, torch::Dtype dtype) {
  if (dtype == torch::kFloat16 && device.is_cpu())
    throw Error(
        "dtype fp16: half-precision compute is not available on the CPU; use bf16 or fp32 "
        "(fp16-stored weights load in either)");
}

// Modules constructed in this scope create their parameters in `dtype`.
struct DefaultDtype {
  caffe2::TypeMeta saved = torch::get_default_dtype();
  explicit DefaultDtype(torch::Dtype dtype) { torch::set_default_dtype(caffe2::TypeMeta::fromScalarType(dtype)); }
  ~DefaultDtype() { torch::set_default_dtype(saved); }
  DefaultDtype(const DefaultDtype&) = delete;
  DefaultDtype& operator=(const DefaultDtype&) = delete;
};

// Returns the pages of a (memory-mapped) tensor that is no longer needed to the kernel, so
// that a checkpoint's pages do not stay resident next to the model built from them.
void release_pages(const torch::Tensor& t) {
  if (!t.defined() || !t.device().is_cpu()) return;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr()), end = begin + t.nbytes();
  const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

// Strict state-dict loading, one submodule at a time (a submodule of over 32M elements is split
// into its children), dropping each part's source tensors once copied: peak memory is the model
// plus one part of the checkpoint. Consumed entries are erased from `sd`; leftovers are errors.
// `int8`: each part's Linear / Conv2d weights are quantised as soon as it is loaded, so that no
// more than one part is held wide.
void load_part(torch::nn::Module& m, const std::string& prefix, TensorMap& sd, const std::string& source, bool int8) {
  int64_t numel = 0;
  for (const auto& t : m.parameters(true)) numel += t.numel();
  const bool direct = !m.named_parameters(false).is_empty() || !m.named_buffers(false).is_empty();
  if (numel > (int64_t{1} << 25) && !direct && !m.named_children().is_empty()) {
    for (const auto& c : m.named_children()) load_part(*c.value(), prefix + c.key() + ".", sd, source, int8);
    return;
  }
  TensorMap part;
  for (auto it = sd.lower_bound(prefix); it != sd.end() && it->first.compare(0, prefix.size(), prefix) == 0;) {
    part[it->first.substr(prefix.size())] = it->second;
    it = sd.erase(it);
  }
  nn::load_state_dict(m, part, source + (prefix.empty() ? "" : " " + prefix.substr(0, prefix.size() - 1)));
  for (const auto& [k, v] : part) release_pages(v);
  if (int8) nn::quantize_int8_weights(m);
}

// The dtype of a state dict whose floating-point tensors are all fp16, or all bf16.
std::optional<torch::Dtype> uniform_half_dtype(const TensorMap& sd) {
  std::optional<torch::Dtype> d;
  for (const auto& [k, v] : sd) {
    if (!v.is_floating_point()) continue;
    const auto t = v.scalar_type();
    if ((t != torch::kFloat16 && t != torch::kBFloat16) || (d && *d != t)) return std::nullopt;
    d = t;
  }
  return d;
}

// int8 weights: the dtype the tensors other than the quantised weights are kept in: the file's
// dtype (16-bit, else float32) when computing in float32, else the compute dtype.
torch::Dtype int8_rest_dtype(torch::Dtype compute, torch::Dtype stored) {
  return compute == torch::kFloat32 ? stored : compute;
}

// Quantises the Linear / Conv2d weights of a loaded model (those not quantised while loading)
// and keeps its other tensors in `rest`.
void make_int8(torch::nn::Module& m, torch::Dtype rest) {
  nn::quantize_int8_weights(m);
  nn::to_dtype_keeping_int8(m, rest);
}

void load_in_parts(torch::nn::Module& m, const std::string& prefix, TensorMap& sd, const std::string& source,
                   bool int8 = false) {
  load_part(m, prefix, sd, source, int8);
  if (!sd.empty()) {
    std::string keys;
    for (const auto& [k, v] : sd) keys += (keys.empty() ? "" : ", ") + k;
    throw Error(source + ": weights do not match the model configuration: unexpected keys " + keys);
  }
}

}  // namespace

bool SDPipeline::is_sd_folder(const std::string& dir) {
  if (!fs::exists(dir + "/model_index.json")) return false;
  auto j = read_json_file(dir + "/model_index.json");
  return j.value("_class_name", std::string()).rfind("StableDiffusion", 0) == 0;
}

namespace {

bool has_component(const nlohmann::json& index, const std::string& name) {
  return index.contains(name) && index[name].is_array() && !index[name].empty() && !index[name][0].is_null();
}

// A tokenizer + text encoder pair of a pipeline folder; 16-bit weights computed in fp32 stay 16-bit.
// `int8`: quantised from the file's values (read in its 16-bit dtype, or float32).
std::shared_ptr<SDTextEncoder> load_text_encoder(const std::string& dir, const std::string& encoder,
                                                 const std::string& tokenizer, torch::Device device, torch::Dtype dtype,
                                                 bool int8) {
  auto te = std::make_shared<SDTextEncoder>();
  te->tokenizer = CLIPTokenizer::from_folder(dir + "/" + tokenizer);
  const auto stored = dtype == torch::kFloat32 || int8
                          ? model_io::stored_half_dtype(dir + "/" + encoder, "model.safetensors")
                          : std::nullopt;
  te->model = load_clip_text_model(dir + "/" + encoder, stored.value_or(int8 ? torch::kFloat32 : dtype));
  if (int8) {
    make_int8(*te->model, int8_rest_dtype(dtype, stored.value_or(torch::kFloat32)));
    te->compute_dtype = dtype;
  } else if (stored) {
    te->compute_dtype = torch::kFloat32;
  }
  te->model->to(device);
  return te;
}

// SDXL: which time ids the UNet takes, from the widths of its added embedding and of the pooled
// text embeddings (diffusers raises at the first call when they disagree; this says it at load).
void check_xl_conditioning(SDPipeline& p, const std::string& source) {
  if (!p.is_xl()) return;
  const auto& c = p.unet_cfg();
  if (p.text_2) {
    const int64_t pooled = p.text_2->model->config().projection_dim;
    const int64_t k = c.num_time_ids(pooled);
    if (k != 5 && k != 6)
      throw Error(source + ": the UNet's added embedding takes " +
                  std::to_string(c.projection_class_embeddings_input_dim.value_or(0)) + " features, which is not " +
                  std::to_string(pooled) + " pooled text features plus 5 or 6 time ids of " +
                  std::to_string(c.addition_time_embed_dim.value_or(0)));
    p.requires_aesthetics_score = k == 5;
  } else if (p.pooled_dim() <= 0) {
    throw Error(source + ": the UNet's added embedding is too narrow for " + std::to_string(p.num_time_ids()) +
                " time ids");
  }
}

}  // namespace

std::string SDPipeline::architecture() const {
  std::string a = is_xl()                                        ? (requires_aesthetics_score ? "SDXL refiner" : "SDXL")
                  : unet_cfg().cross_attention_dim.at(0) == 1024 ? "SD2"
                                                                 : "SD1";
  if (is_inpaint_model()) a += " inpainting";
  return a;
}

std::vector<const SDTextEncoder*> SDPipeline::text_encoders() const {
  std::vector<const SDTextEncoder*> v;
  if (text) v.push_back(text.get());
  if (text_2) v.push_back(text_2.get());
  return v;
}

int64_t SDPipeline::pooled_dim() const {
  if (!is_xl()) return 0;
  if (text_2) return text_2->model->config().projection_dim;
  const auto& c = unet_cfg();
  return c.projection_class_embeddings_input_dim.value_or(0) - num_time_ids() * c.addition_time_embed_dim.value_or(0);
}

SDPipeline SDPipeline::load(const std::string& dir, torch::Device device, torch::Dtype dtype, bool with_text_encoder,
                            bool int8_weights, const SDComponents& parts) {
  if (!fs::is_directory(dir)) throw Error(dir + ": model folder not found");
  check_compute_dtype(device, dtype);
  if (!fs::exists(dir + "/model_index.json"))
    throw Error(dir + ": no model_index.json (not a diffusers pipeline folder)");
  auto index = read_json_file(dir + "/model_index.json");
  const std::string cls = index.value("_class_name", std::string());
  const bool xl = cls.rfind("StableDiffusionXL", 0) == 0;
  if (cls.rfind("StableDiffusion", 0) != 0 || (!xl && cls.find("XL") != std::string::npos))
    throw Error(dir + "/model_index.json: pipeline class '" + cls +
                "' is not a Stable Diffusion pipeline (StableDiffusionPipeline, StableDiffusionInpaintPipeline, "
                "StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline)");
  for (const char* c : {"unet", "vae", "scheduler"}) require_component(dir, index, c);
  // An SDXL refiner has no text_encoder / tokenizer (model_index.json lists them as null).
  const bool with_first = with_text_encoder && (!xl || has_component(index, "text_encoder"));
  if (with_first)
    for (const char* c : {"text_encoder", "tokenizer"}) require_component(dir, index, c);
  if (xl && with_text_encoder)
    for (const char* c : {"text_encoder_2", "tokenizer_2"}) require_component(dir, index, c);
  SDPipeline p;
  p.source = dir;
  p.device = device;
  p.dtype = dtype;
  p.int8_weights = int8_weights;
  const std::string sched = dir + "/scheduler/scheduler_config.json";
  if (!fs::exists(sched)) throw Error(dir + ": missing scheduler/scheduler_config.json");
  p.scheduler = load_scheduler_config(sched);
  p.scheduler_class = read_json_file(sched).value("_class_name", std::string("DDIMScheduler"));
  p.unet_config = read_unet2d_condition_config(dir + "/unet");
  p.vae_config = read_autoencoder_kl_config(dir + "/vae");
  if (xl != p.unet_config.text_time())
    throw Error(dir + ": pipeline class " + cls +
                (xl ? " needs an SDXL UNet (addition_embed_type text_time)"
                    : " cannot run an SDXL UNet (addition_embed_type text_time)"));
  // fp16 / bf16 weights computed in fp32 go back to their 16-bit dtype (exact) and are upcast
  // block by block while they run, as for single files.
  // int8: quantised from the file's values (read as float32), the rest kept as for fp32 compute.
  if (parts.unet) {
    p.unet = load_unet2d_condition(dir + "/unet");
    const auto unet_stored = dtype == torch::kFloat32 || int8_weights
                                 ? model_io::stored_half_dtype(dir + "/unet", "diffusion_pytorch_model.safetensors")
                                 : std::nullopt;
    if (int8_weights) {
      make_int8(*p.unet, int8_rest_dtype(dtype, unet_stored.value_or(torch::kFloat32)));
      p.unet->to(device);
      p.unet->set_compute_dtype(dtype);
    } else {
      p.unet->to(device, unet_stored.value_or(dtype));
      if (unet_stored) p.unet->set_compute_dtype(torch::kFloat32);
    }
  }
  // The VAE always runs in float32 (what SDXL's force_upcast asks for: its fp16 decoder overflows).
  if (parts.vae) {
    p.vae = load_autoencoder_kl(dir + "/vae");
    p.vae->to(device);
  }
  if (with_first && parts.text_encoders)
    p.text = load_text_encoder(dir, "text_encoder", "tokenizer", device, dtype, int8_weights);
  if (xl) {
    if (with_text_encoder && parts.text_encoders)
      p.text_2 = load_text_encoder(dir, "text_encoder_2", "tokenizer_2", device, dtype, int8_weights);
    if (p.text_2 && !p.text_2->model->config().with_projection)
      throw Error(dir + "/text_encoder_2: SDXL needs a CLIPTextModelWithProjection (its pooled text_embeds)");
    for (auto* te : {p.text.get(), p.text_2.get()})
      if (te) te->penultimate = true;
    p.force_zeros_for_empty_prompt =
        index.contains("force_zeros_for_empty_prompt") && index["force_zeros_for_empty_prompt"].is_boolean()
            ? index["force_zeros_for_empty_prompt"].get<bool>()
            : true;
    p.requires_aesthetics_score = index.contains("requires_aesthetics_score") &&
                                  index["requires_aesthetics_score"].is_boolean() &&
                                  index["requires_aesthetics_score"].get<bool>();
    check_xl_conditioning(p, dir);
  }
  return p;
}

SDPipeline load_single_file(const std::string& path, torch::Device device, torch::Dtype dtype, bool with_text_encoder,
                            const LdmConfigOverrides& overrides, bool int8_weights, const SDComponents& parts) {
  check_compute_dtype(device, dtype);
  auto file = safetensors::File::open(path);
  TensorMap all;
  for (const auto& name : file.names()) all[name] = file.get(name);  // shares the mapping
  LdmCheckpoint ck = convert_ldm(all, path, overrides);
  all.clear();
  SDPipeline p;
  p.source = path;
  p.device = device;
  p.dtype = dtype;
  p.int8_weights = int8_weights;
  p.scheduler.beta_schedule = "scaled_linear";
  p.scheduler.beta_start = 0.00085;
  p.scheduler.beta_end = 0.012;
  p.scheduler.steps_offset = 1;
  p.scheduler.clip_sample = false;
  p.scheduler.set_alpha_to_one = false;
  // SDXL checkpoints come with diffusers' SDXL scheduler (Euler, leading spacing)
  p.scheduler_class = ck.xl ? "EulerDiscreteScheduler" : "DDIMScheduler";
  p.unet_config = ck.unet_config;
  p.vae_config = ck.vae_config;
  // fp16 / bf16 weights computed in fp32 stay 16-bit in memory; the UNet upcasts one layer at a
  // time and the text encoder as a whole while it runs (same results, about half the memory).
  // int8 weights are quantised from the file's values part by part as they are loaded.
  if (parts.unet) {
    const auto unet_stored = uniform_half_dtype(ck.unet);
    const bool unet_resident = (dtype == torch::kFloat32 || int8_weights) && unet_stored.has_value();
    {
      // no float32 copy of a 16-bit UNet
      DefaultDtype as(unet_resident                                ? *unet_stored
                      : dtype == torch::kBFloat16 && !int8_weights ? dtype
                                                                   : torch::kFloat32);
      nn::SkipInitGuard every_weight_is_loaded;
      p.unet = UNet2DConditionModel(ck.unet_config);
    }
    load_in_parts(*p.unet, "", ck.unet, path + " (UNet)", int8_weights);
    p.unet->eval();
    if (int8_weights) {
      make_int8(*p.unet, int8_rest_dtype(dtype, unet_stored.value_or(torch::kFloat32)));
      p.unet->to(device);
      p.unet->set_compute_dtype(dtype);
    } else if (unet_resident) {
      p.unet->to(device);
      p.unet->set_compute_dtype(torch::kFloat32);
    } else {
      p.unet->to(device, dtype);
    }
  }
  if (parts.vae) {
    {
      nn::SkipInitGuard every_weight_is_loaded;
      p.vae = AutoencoderKL(ck.vae_config);
    }
    load_in_parts(*p.vae, "", ck.vae, path + " (VAE)");
    p.vae->eval();
    p.vae->to(device);
  }
  if (with_text_encoder && parts.text_encoders) {
    // Tokenizers: SD 1.x and SDXL's CLIP-L pad with <|endoftext|>, OpenCLIP encoders with '!'.
    auto make = [&](const CLIPTextConfig& cfg, const TensorMap& weights, const std::string& pad,
                    const std::string& what) {
      auto te = std::make_shared<SDTextEncoder>();
      te->tokenizer = CLIPTokenizer::builtin(pad);
      const auto stored = uniform_half_dtype(weights);
      const bool resident = (dtype == torch::kFloat32 || int8_weights) && stored.has_value();
      {
        DefaultDtype as(resident ? *stored : dtype == torch::kBFloat16 && !int8_weights ? dtype : torch::kFloat32);
        nn::SkipInitGuard every_weight_is_loaded;
        te->model = CLIPTextModel(cfg);
      }
      TensorMap w = weights;
      w.erase("text_model.embeddings.position_ids");
      load_in_parts(*te->model, "", w, path + " (" + what + ")", int8_weights);
      te->model->eval();
      if (int8_weights) {
        make_int8(*te->model, int8_rest_dtype(dtype, stored.value_or(torch::kFloat32)));
        te->model->to(device);
        te->compute_dtype = dtype;
      } else {
        te->model->to(device, resident ? *stored : dtype);
        if (resident) te->compute_dtype = torch::kFloat32;
      }
      te->penultimate = ck.xl;
      return te;
    };
    if (!ck.text.empty())
      p.text = make(ck.text_config, ck.text, ck.openclip ? "!" : "<|endoftext|>",
                    ck.xl ? "text encoder, CLIP ViT-L" : "text encoder");
    if (ck.xl) p.text_2 = make(ck.text_2_config, ck.text_2, "!", "text encoder 2, OpenCLIP ViT-bigG");
  }
  ck.text.clear();
  ck.text_2.clear();
  if (ck.xl) {
    p.requires_aesthetics_score = ck.architecture.rfind("SDXL refiner", 0) == 0;
    p.force_zeros_for_empty_prompt = !p.requires_aesthetics_score;  // as the SDXL base / refiner folders say
  }
  return p;
}

SDPipeline load_sd(const std::string& path, torch::Device device, torch::Dtype dtype, bool with_text_encoder,
                   const std::string& prediction, const std::string& config_dir, bool int8_weights,
                   const SDComponents& parts) {
  SDPipeline p;
  if (!config_dir.empty() && !fs::is_regular_file(path))
    throw Error(config_dir + ": a config folder applies to single-file checkpoints only");
  if (fs::is_regular_file(path)) {
    const std::string ext = fs::path(path).extension().string();
    if (ext == ".ckpt" || ext == ".pt" || ext == ".pth" || ext == ".bin")
      throw Error(path + ": pickled checkpoints are not loaded (they can run code); convert it to .safetensors");
    if (ext != ".safetensors") throw Error(path + ": expected a pipeline folder or a .safetensors checkpoint");
    LdmConfigOverrides over;
    if (!config_dir.empty()) {
      if (!fs::is_directory(config_dir)) throw Error(config_dir + ": config folder not found");
      for (auto [dir, json] : {std::pair{"unet", &over.unet},
                               {"vae", &over.vae},
                               {"text_encoder", &over.text},
                               {"text_encoder_2", &over.text_2}})
        if (fs::exists(config_dir + "/" + dir + "/config.json"))
          *json = read_json_file(config_dir + "/" + dir + "/config.json");
    }
    p = load_single_file(path, device, dtype, with_text_encoder, over, int8_weights, parts);
    const std::string sched = config_dir + "/scheduler/scheduler_config.json";
    if (!config_dir.empty() && fs::exists(sched)) {
      p.scheduler = load_scheduler_config(sched);
      p.scheduler_class = read_json_file(sched).value("_class_name", p.scheduler_class);
    }
  } else {
    p = SDPipeline::load(path, device, dtype, with_text_encoder, int8_weights, parts);
  }
  if (!prediction.empty()) {
    parse_prediction(prediction);
    p.scheduler.prediction_type = prediction;
  }
  return p;
}

void merge_components(SDPipeline& pipe, SDPipeline&& from) {
  if (!pipe.unet) pipe.unet = std::move(from.unet);
  if (!pipe.vae) pipe.vae = std::move(from.vae);
  if (!pipe.has_text_encoder()) {
    pipe.text = std::move(from.text);
    pipe.text_2 = std::move(from.text_2);
  }
}

void release_components(SDPipeline& pipe, const SDComponents& keep) {
  if (!keep.unet && pipe.unet) {
    pipe.unet_config = pipe.unet->config();
    pipe.unet = nullptr;
  }
  if (!keep.vae && pipe.vae) {
    pipe.vae_config = pipe.vae->config();
    pipe.vae = nullptr;
  }
  if (!keep.text_encoders) {
    pipe.text.reset();
    pipe.text_2.reset();
  }
}

void replace_vae(SDPipeline& pipe, const std::string& path) {
  AutoencoderKLConfig cfg = pipe.vae_cfg();
  TensorMap sd;
  if (fs::is_directory(path)) {
    sd = model_io::load_weights(path, "AutoencoderKL");
  } else {
    if (fs::path(path).extension() != ".safetensors")
      throw Error("vae " + path + ": expected a folder or .safetensors");
    if (!fs::is_regular_file(path)) throw Error("vae " + path + ": no such file");
    auto file = safetensors::File::open(path);
    for (const auto& name : file.names()) {
      std::string k = name.rfind("first_stage_model.", 0) == 0 ? name.substr(18) : name;
      if (k == "model_ema.decay" || k == "model_ema.num_updates") continue;
      sd[k] = file.get(name);
    }
    if (sd.count("encoder.down.0.block.0.conv1.weight")) sd = convert_ldm_vae(sd, cfg, path);
  }
  AutoencoderKL vae(cfg);
  load_in_parts(*vae, "", sd, "vae " + path);
  vae->eval();
  vae->to(pipe.device);
  pipe.vae = vae;
}

int SDPipeline::default_size() const {
  const auto& s = unet_cfg().sample_size;
  return static_cast<int>((s.empty() ? 64 : s[0]) * vae_scale_factor());
}

LatentDistribution SDPipeline::encode(const torch::Tensor& images) const {
  if (!vae) throw Error(source + ": the VAE is not loaded");
  torch::NoGradGuard ng;
  AutoencoderKL v = vae;
  auto post = vae_encode(v, images.to(device, torch::kFloat32), vae_tiling);
  const auto& c = v->config();
  const double sf = c.scaling_factor;
  // logvar shifted so that std() is scaled as well
  return {(post.mean - c.shift_factor.value_or(0.0)) * sf, post.logvar + 2 * std::log(sf)};
}

torch::Tensor SDPipeline::decode(const torch::Tensor& latents) const {
  if (!vae) throw Error(source + ": the VAE is not loaded");
  torch::NoGradGuard ng;
  AutoencoderKL v = vae;
  const auto& c = v->config();
  return vae_decode(v, latents.to(device, torch::kFloat32) / c.scaling_factor + c.shift_factor.value_or(0.0),
                    vae_tiling)
      .to(torch::kCPU);
}

CondDenoiser SDPipeline::denoiser(bool quantize, bool clamp) const {
  if (!unet) throw Error(source + ": the UNet is not loaded");
  UNet2DConditionModel net = unet;
  const torch::Dtype dt = dtype;
  ModelFn model = [net, dt](const torch::Tensor& x, const torch::Tensor& t, const Cond& cond) mutable {
    auto in = x;
    if (cond.has("c_concat")) in = torch::cat({x, cond.get("c_concat").to(x.device(), x.scalar_type())}, 1);
    auto ehs = cond.get("encoder_hidden_states");
    auto text_embeds = cond.get("text_embeds"), time_ids = cond.get("time_ids");  // SDXL
    return net->forward(in.to(dt), t, ehs.to(in.device(), dt), {}, {}, text_embeds, time_ids).to(torch::kFloat32);
  };
  DiscreteDenoiserOptions o;
  o.quantize = quantize;
  if (scheduler.clip_sample && clamp) o.clip_sample_range = scheduler.clip_sample_range;
  return discrete_denoiser(model, DiscreteSchedule(scheduler), parse_prediction(scheduler.prediction_type), o);
}

// ---- sampling plan --------------------------------------------------------------------

namespace {

SamplingPlan make_plan(const SDPipeline& pipe, const SDOptions& opt) {
  return make_sampling_plan(pipe.scheduler, opt.sampler.empty() ? pipe.scheduler_class : opt.sampler, opt.schedule,
                            opt.sigmas, opt.steps, PlanStyle::Diffusers);
}

// [B, C, H, W] float resized to (h, w) when it differs (bilinear).
torch::Tensor fit_size(const torch::Tensor& t, int64_t h, int64_t w) {
  if (t.size(2) == h && t.size(3) == w) return t;
  namespace F = torch::nn::functional;
  return F::interpolate(
      t, F::InterpolateFuncOptions().size(std::vector<int64_t>{h, w}).mode(torch::kBilinear).align_corners(false));
}

void check_nchw(const torch::Tensor& t, int64_t channels, const std::string& what) {
  if (t.dim() != 4 || t.size(1) != channels)
    throw Error(what + ": expected [B, " + std::to_string(channels) + ", H, W], got " + c10::str(t.sizes()));
}

void require_text_encoder(const SDPipeline& pipe) {
  if (!pipe.has_text_encoder())
    throw Error("prompt: " + pipe.source + " was loaded without its text encoder; give prompt embeddings instead");
}

// A1111's expand_crop_region: grows [x1, x2) x [y1, y2) to the aspect ratio pw:ph inside the image.
void expand_crop(int64_t& x1, int64_t& y1, int64_t& x2, int64_t& y2, int pw, int ph, int64_t iw, int64_t ih) {
  auto grow = [](int64_t& a1, int64_t& a2, int64_t diff, int64_t limit) {
    a1 -= diff / 2;
    a2 += diff - diff / 2;
    if (a2 >= limit) {
      int64_t d = a2 - limit;
      a2 -= d;
      a1 -= d;
    }
    if (a1 < 0) {
      a2 -= a1;
      a1 = 0;
    }
    if (a2 >= limit) a2 = limit;
  };
  const double r_crop = static_cast<double>(x2 - x1) / static_cast<double>(y2 - y1);
  const double r_proc = static_cast<double>(pw) / ph;
  if (r_crop > r_proc)
    grow(y1, y2, static_cast<int64_t>((x2 - x1) / r_proc - (y2 - y1)), ih);
  else
    grow(x1, x2, static_cast<int64_t>((y2 - y1) * r_proc - (x2 - x1)), iw);
}

SDResult generate_only_masked(const SDPipeline& pipe, const SDOptions& opt) {
  check_nchw(opt.image, 3, "image");
  check_nchw(opt.mask, 1, "mask");
  const int64_t ih = opt.image.size(2), iw = opt.image.size(3);
  auto mask = blur_mask(fit_size(opt.mask.to(torch::kFloat32), ih, iw), opt.mask_blur);
  auto any = (mask > 0).any(0).any(0);  // [H, W]
  auto ys = any.any(1).nonzero(), xs = any.any(0).nonzero();
  if (ys.numel() == 0) throw Error("mask: nothing to inpaint (the mask is empty)");
  const int pad = std::max(0, opt.only_masked_padding);
  int64_t y1 = std::max<int64_t>(0, ys.min().item<int64_t>() - pad),
          y2 = std::min(ih, ys.max().item<int64_t>() + 1 + pad);
  int64_t x1 = std::max<int64_t>(0, xs.min().item<int64_t>() - pad),
          x2 = std::min(iw, xs.max().item<int64_t>() + 1 + pad);
  const int pw = opt.width > 0 ? opt.width : pipe.default_size(),
            ph = opt.height > 0 ? opt.height : pipe.default_size();
  expand_crop(x1, y1, x2, y2, pw, ph, iw, ih);
  auto crop = [&](const torch::Tensor& t) { return t.slice(2, y1, y2).slice(3, x1, x2); };
  SDOptions sub = opt;
  sub.only_masked = false;
  sub.mask_blur = 0;
  sub.width = pw;
  sub.height = ph;
  sub.image = fit_size(crop(opt.image.to(torch::kFloat32)), ph, pw);
  sub.mask = fit_size(crop(mask), ph, pw);
  SDResult r = generate(pipe, sub);
  auto back = fit_size(r.samples, y2 - y1, x2 - x1);
  auto full = batch_rows(opt.image.to(torch::kFloat32), opt.n, 0, opt.n, "image").clone();
  auto region = full.slice(2, y1, y2).slice(3, x1, x2);
  auto m = batch_rows(crop(mask), opt.n, 0, opt.n, "mask");
  region.copy_(m * back + (1 - m) * region);
  r.samples = full;
  return r;
}

}  // namespace

PromptEncoding encode_prompt(const SDPipeline& pipe, const std::string& prompt, int clip_skip) {
  require_text_encoder(pipe);
  PromptEncoding e;
  std::vector<torch::Tensor> parts;
  for (const auto* te : pipe.text_encoders())  // A1111 syntax and chunks, per encoder
    parts.push_back(encode_weighted_prompt(*te, prompt, clip_skip, 1, &e.pooled));  // pooled: the last encoder's
  e.embeds = parts.size() == 1 ? parts[0] : torch::cat(parts, -1);
  return e;
}

torch::Tensor sdxl_time_ids(const SDPipeline& pipe, const SizeConditioning& c, int height, int width, bool negative) {
  const std::array<int, 2> out{height, width}, zero{0, 0};
  std::array<int, 2> orig = c.original_size.value_or(out), crop = c.crop_coords.value_or(zero),
                     target = c.target_size.value_or(out);
  std::vector<double> ids;
  if (pipe.requires_aesthetics_score) {
    // StableDiffusionXLImg2ImgPipeline: negative sizes default to the positive ones, crops to (0, 0)
    if (negative) {
      orig = c.negative_original_size.value_or(orig);
      crop = c.negative_crop_coords.value_or(zero);
    }
    ids = {double(orig[0]), double(orig[1]), double(crop[0]), double(crop[1]),
           negative ? c.negative_aesthetic_score : c.aesthetic_score};
  } else {
    // StableDiffusionXLPipeline: the negative row differs only when both negative sizes are given
    if (negative && c.negative_original_size && c.negative_target_size) {
      orig = *c.negative_original_size;
      crop = c.negative_crop_coords.value_or(zero);
      target = *c.negative_target_size;
    }
    ids = {double(orig[0]), double(orig[1]), double(crop[0]), double(crop[1]), double(target[0]), double(target[1])};
  }
  return torch::tensor(ids, torch::kFloat64).to(torch::kFloat32).unsqueeze(0);
}

int64_t denoising_split(const SDPipeline& pipe, const torch::Tensor& sigmas, double fraction) {
  if (!(fraction > 0 && fraction < 1)) throw Error("refiner_switch: must lie strictly between 0 and 1");
  const int64_t T = pipe.scheduler.num_train_timesteps;
  const double cutoff = std::round(static_cast<double>(T) - fraction * static_cast<double>(T));
  const int64_t steps = sigmas.size(0) - 1;
  auto t = DiscreteSchedule(pipe.scheduler).sigma_to_t(sigmas.slice(0, 0, steps).to(torch::kFloat64));
  int64_t n = 0;
  for (int64_t i = 0; i < steps; ++i)
    if (t[i].item<double>() >= cutoff - 1e-3) ++n;  // t is fractional only through float rounding
  return n;
}

PromptEmbeddings encode_prompts(const SDPipeline& pipe, const SDOptions& opt) {
  torch::NoGradGuard no_grad;
  PromptEmbeddings pe;
  torch::Tensor &cond_embeds = pe.cond, &uncond_embeds = pe.uncond, &cond_pooled = pe.cond_pooled,
                &uncond_pooled = pe.uncond_pooled;
  const bool guided = opt.guidance > 1.0;
  const bool xl = pipe.is_xl();
  auto encode = [&](const std::string& prompt, torch::Tensor& embeds, torch::Tensor& pooled) {
    auto e = encode_prompt(pipe, prompt, opt.clip_skip);
    embeds = e.embeds;
    pooled = e.pooled;
  };
  if (opt.prompt_embeds.defined()) {
    cond_embeds = opt.prompt_embeds;
    cond_pooled = opt.pooled_prompt_embeds;
    if (xl && !cond_pooled.defined())
      throw Error("pooled_prompt_embeds: SDXL needs them with prompt_embeds (the second text encoder's text_embeds)");
  } else {
    encode(opt.prompt, cond_embeds, cond_pooled);
  }
  if (guided) {
    if (opt.negative_prompt_embeds.defined()) {
      uncond_embeds = opt.negative_prompt_embeds;
      uncond_pooled = opt.negative_pooled_prompt_embeds;
      if (xl && !uncond_pooled.defined())
        throw Error("negative_pooled_prompt_embeds: SDXL needs them with negative_prompt_embeds");
    } else if (xl && opt.negative_prompt.empty() && pipe.force_zeros_for_empty_prompt) {
      // diffusers' force_zeros_for_empty_prompt: no negative prompt conditions on zeros
      uncond_embeds = torch::zeros_like(cond_embeds);
      uncond_pooled = torch::zeros_like(cond_pooled);
    } else {
      encode(opt.negative_prompt, uncond_embeds, uncond_pooled);
    }
    match_prompt_lengths(pipe.text_encoders(), cond_embeds, uncond_embeds, opt.clip_skip);
  }
  return pe;
}

SDResult generate(const SDPipeline& pipe, const SDOptions& opt_in) {
  SDOptions opt = opt_in;
  if (opt.n < 1) throw Error("-n " + std::to_string(opt.n) + ": must be at least 1");
  if (opt.mask.defined() && !opt.image.defined()) throw Error("mask: inpainting needs an init image");
  if (!(opt.strength >= 0 && opt.strength <= 1)) throw Error("strength must lie in [0, 1]");
  if (opt.only_masked && opt.mask.defined()) return generate_only_masked(pipe, opt);
  if (opt.image.defined()) {
    check_nchw(opt.image, 3, "image");
    if (opt.width == 0 && opt.height == 0) {
      opt.width = static_cast<int>(opt.image.size(3));
      opt.height = static_cast<int>(opt.image.size(2));
    }
  }
  if (opt.width == 0) opt.width = pipe.default_size();
  if (opt.height == 0) opt.height = pipe.default_size();
  const int64_t f = pipe.vae_scale_factor(), mult = std::max<int64_t>(8, f);
  if (opt.width <= 0 || opt.height <= 0 || opt.width % mult || opt.height % mult)
    throw Error("width/height " + std::to_string(opt.width) + "x" + std::to_string(opt.height) +
                ": must be positive multiples of " + std::to_string(mult));
  const int64_t C = pipe.latent_channels(), h = opt.height / f, w = opt.width / f;
  const bool inpaint9 = pipe.is_inpaint_model();
  if (opt.latents.defined() &&
      (opt.latents.dim() != 4 || opt.latents.size(1) != C || opt.latents.size(2) != h || opt.latents.size(3) != w))
    throw Error("latents: expected [1 or n, " + std::to_string(C) + ", " + std::to_string(h) + ", " +
                std::to_string(w) + "], got " + c10::str(opt.latents.sizes()));
  torch::Tensor image, mask;  // pixel space, full batch of 1 or n
  if (opt.image.defined()) image = fit_size(opt.image.to(torch::kFloat32), opt.height, opt.width);
  if (opt.mask.defined()) {
    check_nchw(opt.mask, 1, "mask");
    mask = blur_mask(fit_size(opt.mask.to(torch::kFloat32), opt.height, opt.width), opt.mask_blur).clamp(0, 1);
  }
  if (inpaint9 && !mask.defined()) {
    // txt2img on an inpainting model: repaint everything
    mask = torch::ones({1, 1, opt.height, opt.width});
    if (!image.defined()) image = torch::zeros({1, 3, opt.height, opt.width});
  }

  SamplingPlan plan = make_plan(pipe, opt);
  torch::Tensor sigmas = plan.sigmas;
  const bool strength_max = opt.strength >= 1.0;
  const bool from_image = image.defined() && !(mask.defined() && strength_max);  // start from noised init latents
  const bool handoff_end = !std::isnan(opt.denoising_end), handoff_start = !std::isnan(opt.denoising_start);
  if (handoff_start) {
    if (!opt.start_latents.defined() || opt.start_latents.dim() != 4 || opt.start_latents.size(1) != C ||
        opt.start_latents.size(2) != h || opt.start_latents.size(3) != w)
      throw Error("denoising_start: needs start_latents [1 or n, " + std::to_string(C) + ", " + std::to_string(h) +
                  ", " + std::to_string(w) + "]");
    if (inpaint9) throw Error("refiner: a 9-channel inpainting model cannot continue another model's latents");
    image = torch::Tensor();  // the run continues the latents
    mask = torch::Tensor();
  }
  if (image.defined() && !strength_max) sigmas = truncate_sigmas(sigmas, opt.strength);
  if (handoff_end) sigmas = sigmas.slice(0, 0, denoising_split(pipe, sigmas, opt.denoising_end) + 1);
  if (handoff_start) sigmas = sigmas.slice(0, denoising_split(pipe, sigmas, opt.denoising_start));
  if (sigmas.size(0) < 2 && (handoff_end || handoff_start))
    throw Error("refiner_switch " + std::to_string(handoff_end ? opt.denoising_end : opt.denoising_start) +
                ": leaves no step to one of the models with " + std::to_string(opt.steps) + " steps");
  const double s0 = sigmas[0].item<double>(), s_last = sigmas[-1].item<double>();
  const bool need_image_latents = image.defined() && (!inpaint9 || !strength_max);

  torch::NoGradGuard no_grad;
  const bool guided = opt.guidance > 1.0;
  const bool xl = pipe.is_xl();
  const PromptEmbeddings pe = encode_prompts(pipe, opt);
  const torch::Tensor &cond_embeds = pe.cond, &uncond_embeds = pe.uncond, &cond_pooled = pe.cond_pooled,
                      &uncond_pooled = pe.uncond_pooled;
  const int64_t ctx = pipe.unet->config().cross_attention_dim.at(0);
  for (const auto* e : {&cond_embeds, &uncond_embeds})
    if (e->defined() && (e->dim() != 3 || e->size(2) != ctx))
      throw Error("prompt embeddings: expected [1 or n, L, " + std::to_string(ctx) + "], got " + c10::str(e->sizes()));
  torch::Tensor cond_time_ids, uncond_time_ids;
  if (xl) {
    const int64_t pd = pipe.pooled_dim();
    for (const auto* e : {&cond_pooled, &uncond_pooled})
      if (e->defined() && (e->dim() != 2 || e->size(1) != pd))
        throw Error("pooled prompt embeddings: expected [1 or n, " + std::to_string(pd) + "], got " +
                    c10::str(e->sizes()));
    cond_time_ids = sdxl_time_ids(pipe, opt.size_cond, opt.height, opt.width, false);
    uncond_time_ids = sdxl_time_ids(pipe, opt.size_cond, opt.height, opt.width, true);
  }

  const SamplerDesc& sampler = *plan.sampler;
  CondDenoiser cd = pipe.denoiser(plan.quantize, plan.denoiser_clamps(pipe.scheduler));
  SDResult res;
  if (opt.shards < 1 || opt.shard < 0 || opt.shard >= opt.shards)
    throw Error("shard " + std::to_string(opt.shard) + " of " + std::to_string(opt.shards) + ": out of range");
  // zeros: the rows of other shards' batches stay zero
  res.samples = torch::zeros({opt.n, 3, opt.height, opt.width});
  res.latents = torch::zeros({opt.n, C, h, w});
  res.noise = torch::zeros({opt.n, C, h, w});
  res.x_end = torch::zeros({opt.n, C, h, w});
  if (handoff_end || !opt.decode) res.samples = torch::Tensor();
  const int bs = std::max(1, opt.batch_size);
  for (int start = 0, batch = 0; start < opt.n; start += bs, ++batch) {
    if (batch % opt.shards != opt.shard) continue;
    const int end = std::min(opt.n, start + bs), b = end - start;
    PerImageNoise gen(opt.rng, opt.seed + static_cast<uint64_t>(start), b);
    auto img = batch_rows(image, opt.n, start, end, "image");
    auto msk = batch_rows(mask, opt.n, start, end, "mask");
    // Draws in diffusers' order per image: posterior sample of the init image, starting
    // noise, posterior sample of the masked image.
    LatentDistribution post, masked_post;
    torch::Tensor mask_bin;
    if (need_image_latents) post = pipe.encode(img);
    if (inpaint9) {
      mask_bin = (msk >= 0.5).to(torch::kFloat32);
      masked_post = pipe.encode(img * (mask_bin < 0.5));
    }
    std::vector<torch::Tensor> init_l, noise_l, masked_l;
    for (int i = 0; i < b; ++i) {
      auto ui = static_cast<size_t>(i);
      if (need_image_latents) init_l.push_back(post.mean[i] + post.std()[i] * gen.randn(ui, {C, h, w}).to(pipe.device));
      noise_l.push_back(opt.latents.defined()
                            ? batch_rows(opt.latents, opt.n, start, end, "latents")[i].to(torch::kFloat32)
                            : gen.randn(ui, {C, h, w}));
      if (inpaint9)
        masked_l.push_back(masked_post.mean[i] + masked_post.std()[i] * gen.randn(ui, {C, h, w}).to(pipe.device));
    }
    auto noise = torch::stack(noise_l).to(pipe.device);
    auto init = need_image_latents ? torch::stack(init_l) : torch::Tensor();
    res.noise.slice(0, start, end).copy_(noise);

    Cond cond, uncond;
    cond.tensors["encoder_hidden_states"] = batch_rows(cond_embeds, opt.n, start, end, "prompt_embeds").to(pipe.device);
    if (guided)
      uncond.tensors["encoder_hidden_states"] =
          batch_rows(uncond_embeds, opt.n, start, end, "negative_prompt_embeds").to(pipe.device);
    if (xl) {
      cond.tensors["text_embeds"] = batch_rows(cond_pooled, opt.n, start, end, "pooled_prompt_embeds").to(pipe.device);
      cond.tensors["time_ids"] = cond_time_ids.expand({b, -1}).to(pipe.device);
      if (guided) {
        uncond.tensors["text_embeds"] =
            batch_rows(uncond_pooled, opt.n, start, end, "negative_pooled_prompt_embeds").to(pipe.device);
        uncond.tensors["time_ids"] = uncond_time_ids.expand({b, -1}).to(pipe.device);
      }
    }
    torch::Tensor latent_mask;
    if (inpaint9) {
      namespace F = torch::nn::functional;
      auto m =
          F::interpolate(mask_bin, F::InterpolateFuncOptions().size(std::vector<int64_t>{h, w}).mode(torch::kNearest));
      auto cc = torch::cat({m.to(pipe.device), torch::stack(masked_l)}, 1);
      cond.tensors["c_concat"] = cc;
      uncond.tensors["c_concat"] = cc;
    } else if (msk.defined()) {
      namespace F = torch::nn::functional;
      latent_mask = F::interpolate(msk, F::InterpolateFuncOptions().size(std::vector<int64_t>{h, w}).mode(torch::kArea))
                        .to(pipe.device);
    }
    Denoiser den = guided ? cfg_denoiser(cd, cond, uncond, opt.guidance, opt.cfg_rescale,
                                         parse_prediction(pipe.scheduler.prediction_type))
                          : bind(cd, cond);
    if (guided && (opt.guidance_sigma_lo > 0 || std::isfinite(opt.guidance_sigma_hi)))
      den = guidance_interval(den, bind(cd, cond), opt.guidance_sigma_lo, opt.guidance_sigma_hi);
    if (latent_mask.defined()) {
      // masked img2img (A1111): the known region's x0 is the init image's latents
      den = [den, latent_mask, init](const torch::Tensor& x, const torch::Tensor& s) {
        return den(x, s) * latent_mask + init * (1 - latent_mask);
      };
    }
    torch::Tensor lat;
    if (sigmas.size(0) < 2) {
      lat = init;  // strength 0: nothing to re-run
    } else {
      auto x = handoff_start
                   ? batch_rows(opt.start_latents, opt.n, start, end, "start_latents").to(pipe.device, torch::kFloat32)
               : from_image ? init + s0 * noise
                            : noise * plan.init_scale(s0);
      SamplerOptions so;
      if (!std::isnan(opt.eta)) so.eta = opt.eta;
      so.s_noise = opt.s_noise;
      so.noise = &gen;
      so.callback = opt.callback;
      so.x0_clamp = plan.x0_clamp;
      x = sampler.fn(den, x, sigmas.to(pipe.device), so);
      res.x_end.slice(0, start, end).copy_(x);
      lat = s_last > 0 ? x / std::sqrt(1 + s_last * s_last) : x;  // back to diffusers' VP latents
    }
    if (latent_mask.defined()) lat = lat * latent_mask + init * (1 - latent_mask);
    res.latents.slice(0, start, end).copy_(lat);
    if (sigmas.size(0) < 2) res.x_end.slice(0, start, end).copy_(lat);
    if (!handoff_end && opt.decode) res.samples.slice(0, start, end).copy_(pipe.decode(lat));
  }
  return res;
}

torch::Tensor decode_samples(const SDPipeline& pipe, const SDOptions& opt, const torch::Tensor& latents) {
  auto samples = torch::zeros(
      {latents.size(0), 3, latents.size(2) * pipe.vae_scale_factor(), latents.size(3) * pipe.vae_scale_factor()});
  const int64_t n = latents.size(0), bs = std::max(1, opt.batch_size);
  for (int64_t start = 0, batch = 0; start < n; start += bs, ++batch)
    if (batch % opt.shards == opt.shard) {
      const int64_t end = std::min(n, start + bs);
      samples.slice(0, start, end).copy_(pipe.decode(latents.slice(0, start, end)));
    }
  return samples;
}

std::string sd_generation_parameters(const SDPipeline& pipe, const SDOptions& opt, int index) {
  std::ostringstream o;
  if (!opt.prompt.empty()) o << opt.prompt << "\n";
  if (!opt.negative_prompt.empty()) o << "Negative prompt: " << opt.negative_prompt << "\n";
  SamplingPlan plan = make_plan(pipe, opt);
  o << "Steps: " << opt.steps << ", Sampler: " << plan.sampler->name;
  if (opt.sigmas.empty() && !plan.schedule.empty()) o << ", Schedule type: " << plan.schedule;
  if (!opt.sigmas.empty()) o << ", Sigmas: \"" << opt.sigmas << "\"";
  o << ", CFG scale: " << opt.guidance;
  if (opt.cfg_rescale != 0) o << ", CFG rescale: " << opt.cfg_rescale;
  if (opt.guidance_sigma_lo > 0 || std::isfinite(opt.guidance_sigma_hi))
    o << ", Guidance interval: \"" << opt.guidance_sigma_lo << ", " << opt.guidance_sigma_hi << "\"";
  if (!std::isnan(opt.eta)) o << ", Eta: " << opt.eta;
  if (opt.s_noise != 1.0) o << ", S noise: " << opt.s_noise;
  if (opt.rng != "cpu") o << ", RNG: " << opt.rng;
  const int wd =
      opt.width > 0 ? opt.width : (opt.image.defined() ? static_cast<int>(opt.image.size(3)) : pipe.default_size());
  const int ht =
      opt.height > 0 ? opt.height : (opt.image.defined() ? static_cast<int>(opt.image.size(2)) : pipe.default_size());
  o << ", Seed: " << (opt.seed + static_cast<uint64_t>(index)) << ", Size: " << wd << "x" << ht;
  o << ", Model: " << fs::path(pipe.source).filename().string();
  if (opt.image.defined()) o << ", Denoising strength: " << opt.strength;
  if (opt.mask.defined() && opt.mask_blur > 0) o << ", Mask blur: " << opt.mask_blur;
  if (opt.mask.defined() && opt.only_masked)
    o << ", Inpaint area: Only masked, Masked area padding: " << opt.only_masked_padding;
  if (opt.clip_skip > 0) o << ", Clip skip: " << opt.clip_skip + 1;
  o << ", Version: diffuse 0.1.0";
  return o.str();
}

}  // namespace diffuse
