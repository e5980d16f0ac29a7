#include "pipelines/pixel_pipeline.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/json_file.h"
#include "diffusion/sigmas.h"
#include "nn/autocast.h"
#include "pipelines/image_noise.h"
#include "pipelines/scheduler_config.h"

namespace fs = std::filesystem;

namespace diffuse {

int PixelPipeline::latent_size() const { return static_cast<int>(net.sample_size()); }
int PixelPipeline::latent_channels() const { return static_cast<int>(net.in_channels()); }
int PixelPipeline::image_size() const {
  return latent_size() * (vae ? static_cast<int>(vae->config().downsample_factor()) : 1);
}
int PixelPipeline::channels() const { return vae ? static_cast<int>(vae->config().out_channels) : latent_channels(); }

torch::Tensor PixelPipeline::decode(const torch::Tensor& z) const {
  if (!vae) return z;
  const auto& c = vae->config();
  auto zz = z.to(device) / c.scaling_factor;
  if (c.shift_factor) zz = zz + *c.shift_factor;
  torch::NoGradGuard ng;
  return vae.ptr()->decode(zz);
}

namespace {

// DiTPipeline's id2label ({"0": "tench, Tinca tinca", ...}): the first comma-separated name per id.
std::vector<std::string> class_names_from_id2label(const nlohmann::json& id2label, int64_t n, const std::string& src) {
  std::vector<std::string> names(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) names[i] = std::to_string(i);
  try {
    for (const auto& [k, v] : id2label.items()) {
      int64_t id = std::stoll(k);
      if (id < 0 || id >= n) continue;
      std::string name = v.get<std::string>();
      names[id] = name.substr(0, name.find(','));
    }
  } catch (const std::exception& e) {
    throw Error(src + ": id2label: " + e.what());
  }
  return names;
}

}  // namespace

PixelPipeline PixelPipeline::load(const std::string& dir, torch::Device device) {
  if (!fs::is_directory(dir)) throw Error(dir + ": model folder not found");
  PixelPipeline p;
  p.source = dir;
  p.device = device;
  std::string net_dir = dir;
  nlohmann::json index;
  if (fs::exists(dir + "/model_index.json")) {
    index = read_json_file(dir + "/model_index.json");
    if (index.contains("unet"))
      net_dir = dir + "/unet";
    else if (index.contains("transformer"))
      net_dir = dir + "/transformer";
    else
      throw Error(dir + "/model_index.json: no 'unet' or 'transformer' component");
    if (fs::exists(dir + "/scheduler/scheduler_config.json"))
      p.scheduler = load_scheduler_config(dir + "/scheduler/scheduler_config.json");
    if (index.contains("vae") || index.contains("vqvae")) {
      if (!index.contains("vae")) throw Error(dir + "/model_index.json: VQ-VAE pipelines are not supported");
      p.vae = load_autoencoder_kl(dir + "/vae");
      p.vae->eval();
      p.vae->to(device);
    }
  } else if (!fs::exists(dir + "/config.json")) {
    throw Error(dir + ": neither model_index.json (pipeline) nor config.json (UNet or DiT) found");
  }
  p.net = load_diffusion_net(net_dir);
  p.net.module().eval();
  p.net.module().to(device);
  if (p.vae && p.vae->config().latent_channels != p.net.in_channels())
    throw Error(dir + ": the VAE has " + std::to_string(p.vae->config().latent_channels) + " latent channels but the " +
                p.net.class_name() + " takes " + std::to_string(p.net.in_channels()));
  const int64_t embeds = p.net.class_embeddings();
  if (fs::exists(dir + "/class_names.json")) {
    try {
      auto j = read_json_file(dir + "/class_names.json");
      p.class_names = j.at("class_names").get<std::vector<std::string>>();
      p.null_class = j.value("null_class", static_cast<int64_t>(-1));
    } catch (const nlohmann::json::exception& e) {
      throw Error(dir + "/class_names.json: " + e.what());
    }
  } else if (p.net.is_dit()) {
    p.null_class = p.net.builtin_null_class();
    p.class_names = index.contains("id2label") && index["id2label"].is_object()
                        ? class_names_from_id2label(index["id2label"], p.null_class, dir + "/model_index.json")
                        : class_names_from_id2label(nlohmann::json::object(), p.null_class, dir);
  } else if (embeds > 0) {
    for (int64_t i = 0; i < embeds; ++i) p.class_names.push_back(std::to_string(i));
  }
  if (!p.class_names.empty() && static_cast<int64_t>(p.class_names.size()) > embeds)
    throw Error(dir + "/class_names.json: " + std::to_string(p.class_names.size()) + " classes but the " +
                p.net.class_name() + " has " + std::to_string(embeds) + " class embeddings");
  if (p.null_class >= embeds) throw Error(dir + "/class_names.json: null_class out of range");
  return p;
}

void PixelPipeline::save(const std::string& dir) const {
  fs::create_directories(dir + "/scheduler");
  net.save(dir + "/" + net.component());
  if (vae) save_autoencoder_kl(vae, dir + "/vae");
  write_file_atomically(dir + "/scheduler/scheduler_config.json", scheduler_config_json(scheduler).dump(2) + "\n");
  nlohmann::json index = {{"_diffusers_version", "0.28.2"}, {"scheduler", {"diffusers", "DDPMScheduler"}}};
  index[net.component()] = {"diffusers", net.class_name()};
  if (vae) index["vae"] = {"diffusers", "AutoencoderKL"};
  if (net.is_dit()) {
    index["_class_name"] = "DiTPipeline";
    nlohmann::json id2label = nlohmann::json::object();
    for (size_t i = 0; i < class_names.size(); ++i) id2label[std::to_string(i)] = class_names[i];
    index["id2label"] = id2label;
  } else {
    index["_class_name"] = vae ? "LDMPipeline" : "DDPMPipeline";
  }
  write_file_atomically(dir + "/model_index.json", index.dump(2) + "\n");
  if (!class_names.empty() || null_class >= 0) {
    nlohmann::json j = {{"class_names", class_names}, {"null_class", null_class}};
    write_file_atomically(dir + "/class_names.json", j.dump(2) + "\n");
  }
}

int64_t PixelPipeline::class_index(const std::string& s) const {
  if (class_names.empty()) throw Error("class " + s + ": this model is unconditional");
  for (size_t i = 0; i < class_names.size(); ++i)
    if (class_names[i] == s) return static_cast<int64_t>(i);
  try {
    size_t pos = 0;
    long v = std::stol(s, &pos);
    if (pos == s.size() && v >= 0 && v < static_cast<long>(class_names.size())) return v;
  } catch (const std::exception&) {
  }
  std::string valid;
  for (size_t i = 0; i < class_names.size(); ++i) valid += (i ? ", " : "") + std::to_string(i) + "=" + class_names[i];
  throw Error("class " + s + ": unknown class (valid: " + valid + ")");
}

CondDenoiser PixelPipeline::denoiser(bool quantize, bool clamp, torch::Dtype compute) const {
  if (compute != torch::kFloat32 && compute != torch::kBFloat16)
    throw Error(std::string("dtype ") + c10::toString(compute) + ": this model computes in fp32 or bf16");
  DiffusionNet n = net;
  const torch::Device dev = device;
  const bool bf16 = compute == torch::kBFloat16;
  ModelFn model = [n, dev, bf16](const torch::Tensor& x, const torch::Tensor& t, const Cond& cond) {
    if (!bf16) return n.forward(x, t, cond.get("class_labels"));
    nn::AutocastGuard autocast(dev, true);
    return n.forward(x, t, cond.get("class_labels")).to(torch::kFloat32);
  };
  DiscreteDenoiserOptions o;
  o.quantize = quantize;
  if (scheduler.clip_sample && clamp) o.clip_sample_range = scheduler.clip_sample_range;
  return discrete_denoiser(model, DiscreteSchedule(scheduler), parse_prediction(scheduler.prediction_type), o);
}

int PixelPipeline::size_step() const {
  return static_cast<int>(net.size_multiple()) * (vae ? static_cast<int>(vae->config().downsample_factor()) : 1);
}

torch::Tensor PixelPipeline::encode(const torch::Tensor& images) const {
  if (!vae) return images.to(device, torch::kFloat32);
  const auto& c = vae->config();
  torch::NoGradGuard ng;
  auto z = vae.ptr()->encode(images.to(device, torch::kFloat32)).mean;
  if (c.shift_factor) z = z - *c.shift_factor;
  return z * c.scaling_factor;
}

void check_guide(const PixelPipeline& pipe, const PixelPipeline& guide) {
  const std::string what = "guide_model " + guide.source + ": ";
  auto shape = [](const PixelPipeline& p) {
    return std::to_string(p.latent_channels()) + "x" + std::to_string(p.latent_size()) + "x" +
           std::to_string(p.latent_size());
  };
  if (pipe.latent() != guide.latent())
    throw Error(what + (guide.latent() ? "a latent model" : "a pixel model") + " cannot guide " +
                (pipe.latent() ? "a latent model" : "a pixel model"));
  if (shape(pipe) != shape(guide)) throw Error(what + "samples " + shape(guide) + ", the model " + shape(pipe));
  if (pipe.latent()) {
    const auto& a = pipe.vae->config();
    const auto& b = guide.vae->config();
    bool same = a.scaling_factor == b.scaling_factor && a.shift_factor == b.shift_factor;
    auto pa = pipe.vae->named_parameters(), pb = guide.vae->named_parameters();
    same = same && pa.size() == pb.size();
    torch::NoGradGuard ng;
    for (const auto& it : pa) {
      if (!same) break;
      const auto* other = pb.find(it.key());
      same = other && other->sizes() == it.value().sizes() &&
             torch::equal(other->to(torch::kCPU), it.value().to(torch::kCPU));
    }
    if (!same) throw Error(what + "its VAE differs from the model's (autoguidance needs one latent space)");
  }
  if (pipe.class_conditional() && guide.class_conditional() && pipe.class_names != guide.class_names)
    throw Error(what + "its classes differ from the model's");
  if (!pipe.class_conditional() && guide.class_conditional() && guide.null_class < 0)
    throw Error(what + "class-conditional without a null class, so it cannot guide an unconditional model");
}

std::string generation_parameters(const PixelPipeline& pipe, const GenerateOptions& opt, int index) {
  std::ostringstream o;
  if (pipe.class_conditional() && !opt.classes.empty()) {
    int64_t k = opt.classes[static_cast<size_t>(index)];
    o << (k >= 0 && k < static_cast<int64_t>(pipe.class_names.size()) ? pipe.class_names[k] : std::to_string(k))
      << "\n";
  }
  const SamplerDesc& sd = find_sampler(opt.sampler);
  o << "Steps: " << opt.steps << ", Sampler: " << sd.name;
  if (!opt.schedule.empty()) o << ", Schedule type: " << opt.schedule;
  if (!opt.sigmas.empty()) o << ", Sigmas: \"" << opt.sigmas << "\"";
  if (opt.guide)
    o << ", Autoguidance scale: " << opt.guidance
      << ", Guide model: " << fs::path(opt.guide->source).filename().string()
      << (opt.guide_unconditional ? " (unconditional)" : "");
  else if (pipe.class_conditional())
    o << ", CFG scale: " << opt.guidance;
  if (opt.cfg_rescale != 0) o << ", CFG rescale: " << opt.cfg_rescale;
  if (opt.guidance_sigma_lo > 0 || std::isfinite(opt.guidance_sigma_hi))
    o << ", Guidance interval: \"" << opt.guidance_sigma_lo << ", " << opt.guidance_sigma_hi << "\"";
  if (!std::isnan(opt.eta)) o << ", Eta: " << opt.eta;
  if (opt.s_noise != 1.0) o << ", S noise: " << opt.s_noise;
  if (opt.rng != "cpu") o << ", RNG: " << opt.rng;
  if (opt.dtype == torch::kBFloat16) o << ", Dtype: bf16";
  o << ", Seed: " << (opt.seed + static_cast<uint64_t>(index)) << ", Size: " << pipe.image_size() << "x"
    << pipe.image_size();
  if (pipe.class_conditional() && !opt.classes.empty()) o << ", Class: " << opt.classes[static_cast<size_t>(index)];
  o << ", Model: " << fs::path(pipe.source).filename().string() << ", Version: diffuse 0.1.0";
  return o.str();
}

}  // namespace diffuse
