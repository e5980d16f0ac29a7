#include "pipelines/pixel_pipeline.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/json_file.h"
#include "diffusion/sigmas.h"
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

CondDenoiser PixelPipeline::denoiser() const {
  DiffusionNet n = net;
  ModelFn model = [n](const torch::Tensor& x, const torch::Tensor& t, const Cond& cond) {
    return n.forward(x, t, cond.get("class_labels"));
  };
  CondDenoiser d = discrete_denoiser(model, DiscreteSchedule(scheduler), parse_prediction(scheduler.prediction_type));
  if (scheduler.clip_sample) {
    double r = scheduler.clip_sample_range;
    return [d, r](const torch::Tensor& x, const torch::Tensor& s, const Cond& c) { return d(x, s, c).clamp(-r, r); };
  }
  return d;
}

namespace {

torch::Tensor sigmas_for(const PixelPipeline& pipe, const GenerateOptions& opt, std::string* schedule_used) {
  if (!opt.sigmas.empty()) {
    *schedule_used = "custom";
    return parse_sigmas(opt.sigmas);
  }
  if (opt.steps < 1) throw Error("steps " + std::to_string(opt.steps) + ": must be at least 1");
  std::string hint;
  find_sampler(opt.sampler, &hint);
  std::string schedule = !opt.schedule.empty() ? opt.schedule : (!hint.empty() ? hint : "discrete");
  *schedule_used = schedule;
  return make_sigmas(schedule, opt.steps, DiscreteSchedule(pipe.scheduler), pipe.scheduler);
}

}  // namespace

GenerateResult generate(const PixelPipeline& pipe, const GenerateOptions& opt) {
  if (opt.n < 1) throw Error("-n " + std::to_string(opt.n) + ": must be at least 1");
  if (!opt.classes.empty() && static_cast<int>(opt.classes.size()) != opt.n)
    throw Error("generate: one class per image expected");
  if (opt.class_weights.defined() &&
      (!pipe.class_conditional() || opt.class_weights.dim() != 2 || opt.class_weights.size(0) != opt.n ||
       opt.class_weights.size(1) != pipe.net.class_embeddings()))
    throw Error("generate: class_weights must be [n, " + std::to_string(pipe.net.class_embeddings()) +
                "] for a class-conditional model");
  if (opt.noise.defined() &&
      opt.noise.sizes() != torch::IntArrayRef({opt.n, pipe.latent_channels(), pipe.latent_size(), pipe.latent_size()}))
    throw Error("generate: noise must be [n, " + std::to_string(pipe.latent_channels()) + ", " +
                std::to_string(pipe.latent_size()) + ", " + std::to_string(pipe.latent_size()) + "]");
  if (opt.guide) {
    check_guide(pipe, *opt.guide);
    if (opt.cfg_rescale != 0) throw Error("guidance_rescale: applies to classifier-free guidance, not to guide_model");
    if (opt.guide_unconditional && opt.guide->class_conditional() && opt.guide->null_class < 0)
      throw Error("guide_unconditional: the guide model " + opt.guide->source + " has no null class");
  } else if (opt.guidance != 1.0 && !pipe.class_conditional()) {
    throw Error("guidance: this model is unconditional (classifier-free guidance needs class labels)");
  } else if (opt.guidance != 1.0 && pipe.null_class < 0) {
    throw Error("guidance: this model has no null class to guide against");
  }
  const SamplerDesc& sampler = find_sampler(opt.sampler);
  std::string schedule_used;
  torch::Tensor sigmas = sigmas_for(pipe, opt, &schedule_used);
  const int c = pipe.latent_channels(), s = pipe.latent_size();
  auto samples = torch::empty({opt.n, pipe.channels(), pipe.image_size(), pipe.image_size()});
  torch::Tensor latents_all = pipe.latent() ? torch::empty({opt.n, c, s, s}) : torch::Tensor();
  auto noise_all = torch::empty({opt.n, c, s, s});
  CondDenoiser d = pipe.denoiser();
  CondDenoiser guide_d = opt.guide ? opt.guide->denoiser() : CondDenoiser();
  const bool guided = opt.guidance != 1.0;
  torch::NoGradGuard no_grad;
  const int bs = std::max(1, opt.batch_size);
  for (int start = 0; start < opt.n; start += bs) {
    int end = std::min(opt.n, start + bs);
    PerImageNoise sampler_noise(opt.rng, opt.seed + static_cast<uint64_t>(start), end - start);
    std::vector<torch::Tensor> noise;
    for (int i = start; i < end; ++i) noise.push_back(sampler_noise.randn(static_cast<size_t>(i - start), {c, s, s}));
    auto n0 = opt.noise.defined() ? opt.noise.slice(0, start, end).to(torch::kFloat32) : torch::stack(noise);
    noise_all.slice(0, start, end).copy_(n0);
    Cond cond;
    std::vector<int64_t> labels;
    if (pipe.class_conditional()) {
      for (int i = start; i < end; ++i)
        labels.push_back(opt.classes.empty() ? (pipe.null_class >= 0 ? pipe.null_class : 0) : opt.classes[i]);
      cond.tensors["class_labels"] = torch::tensor(labels, torch::kInt64).to(pipe.device);
      if (opt.class_weights.defined())
        cond.tensors["class_labels"] = opt.class_weights.slice(0, start, end).to(pipe.device, torch::kFloat32);
    }
    Denoiser den = bind(d, cond);
    if (guided && opt.guide) {
      Cond guide_cond;
      if (opt.guide->class_conditional()) {
        // check_guide: the same classes, or a null class when the main model has none.
        std::vector<int64_t> guide_labels = labels;
        if (guide_labels.empty() || opt.guide_unconditional)
          guide_labels.assign(static_cast<size_t>(end - start), opt.guide->null_class);
        guide_cond.tensors["class_labels"] = torch::tensor(guide_labels, torch::kInt64).to(opt.guide->device);
        if (opt.class_weights.defined() && !labels.empty() && !opt.guide_unconditional &&
            opt.guide->net.class_embeddings() == pipe.net.class_embeddings())
          guide_cond.tensors["class_labels"] = cond.get("class_labels").to(opt.guide->device);
      }
      den = autoguidance(den, bind(guide_d, guide_cond), opt.guidance);
    } else if (guided) {
      auto null_labels = torch::full({end - start}, pipe.null_class, torch::kInt64);
      if (opt.class_weights.defined())  // the same layout as the conditional branch (concatenated with it)
        null_labels = torch::one_hot(null_labels, pipe.net.class_embeddings()).to(torch::kFloat32);
      Cond uncond{{{"class_labels", null_labels.to(pipe.device)}}};
      den = cfg_denoiser(d, cond, uncond, opt.guidance, opt.cfg_rescale,
                         parse_prediction(pipe.scheduler.prediction_type));
    }
    if (guided && (opt.guidance_sigma_lo > 0 || std::isfinite(opt.guidance_sigma_hi)))
      den = guidance_interval(den, bind(d, cond), opt.guidance_sigma_lo, opt.guidance_sigma_hi);
    SamplerOptions so;
    if (!std::isnan(opt.eta)) so.eta = opt.eta;  // otherwise the sampler's default
    so.s_noise = opt.s_noise;
    so.noise = &sampler_noise;
    so.callback = opt.callback;
    auto x = (n0 * sigmas[0].item<double>()).to(pipe.device);
    auto out = sampler.fn(den, x, sigmas.to(pipe.device), so);
    if (pipe.latent()) latents_all.slice(0, start, end).copy_(out.to(torch::kCPU, torch::kFloat32));
    samples.slice(0, start, end).copy_(pipe.decode(out).to(torch::kCPU, torch::kFloat32));
  }
  return {samples, noise_all, latents_all};
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
  o << ", Seed: " << (opt.seed + static_cast<uint64_t>(index)) << ", Size: " << pipe.image_size() << "x"
    << pipe.image_size();
  if (pipe.class_conditional() && !opt.classes.empty()) o << ", Class: " << opt.classes[static_cast<size_t>(index)];
  o << ", Model: " << fs::path(pipe.source).filename().string() << ", Version: diffuse 0.1.0";
  return o.str();
}

}  // namespace diffuse
