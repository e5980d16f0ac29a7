#include "pipelines/sd_pipeline.h"

#include <sys/mman.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_file.h"
#include "core/safetensors.h"
#include "models/model_io.h"
#include "nn/compute_dtype.h"
#include "nn/int8_weights.h"
#include "nn/skip_init.h"
#include "nn/state_dict.h"
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

}  // namespace diffuse
