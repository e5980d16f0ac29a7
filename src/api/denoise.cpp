// diffuse::denoise: a noisy image -> its estimated noise level -> the pixel pipeline's denoiser or
// sampler entered at that level.
#include "diffuse/denoise.h"

#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <sstream>

#include "api/model_state.h"
#include "core/error.h"
#include "core/image.h"
#include "pipelines/denoise.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {

// The sampling fields as a GenerationRequest, which validates and resolves them.
GenerationRequest sampling_of(const DenoiseRequest& r) {
  GenerationRequest g;
  g.sampler = r.sampler;
  g.schedule = r.schedule;
  g.steps = r.steps;
  g.seed = r.seed;
  g.rng = r.rng;
  g.eta = r.eta;
  g.s_noise = r.s_noise;
  g.class_label = r.class_label;
  return g;
}

std::string denoise_infotext(const DenoiseResult& res, const std::string& model_name,
                             const std::vector<std::string>& classes) {
  const DenoiseRequest& r = res.request;
  std::ostringstream o;
  o << "Denoise: " << r.mode << ", Sigma: " << res.sigma << (res.sigma_estimated ? " (estimated)" : "")
    << ", Estimated sigma: " << res.estimated_sigma;
  if (r.mode == "sample") {
    o << ", Steps: " << *r.steps << ", Sampler: " << r.sampler;
    if (!r.schedule.empty()) o << ", Schedule type: " << r.schedule;
    if (r.eta) o << ", Eta: " << *r.eta;
    if (r.s_noise != 1.0) o << ", S noise: " << r.s_noise;
    if (r.rng != "cpu") o << ", RNG: " << r.rng;
    o << ", Seed: " << r.seed;
  }
  if (!classes.empty()) o << ", Class: " << (r.class_label.empty() ? "none (null class)" : r.class_label);
  o << ", Model: " << model_name << ", Version: diffuse 0.1.0";
  return o.str();
}

}  // namespace

RequestError as_request_error(const Error& e) {
  const std::string msg = e.what();  // pipeline messages start with the option they concern
  for (const char* field : {"sigma", "steps", "class", "frames", "image"}) {
    const size_t n = std::strlen(field);
    if (msg.compare(0, n, field) == 0 && msg.size() > n && (msg[n] == ' ' || msg[n] == ':'))
      return RequestError(field, msg.substr(msg[n] == ':' ? n + 2 : n + 1));
  }
  return RequestError("model", msg);
}

std::vector<FieldError> DenoiseRequest::validate() const {
  std::vector<FieldError> e;
  for (const auto& f : sampling_of(*this).validate())
    if (f.field != "class") e.push_back(f);
  if (image.empty()) e.push_back({"image", "required: the noisy image (PNG or JPEG)"});
  if (sigma && !(*sigma > 0 && std::isfinite(*sigma)))
    e.push_back({"sigma", "must be a positive noise level in [-1, 1] units (or unset to estimate it)"});
  if (mode != "mmse" && mode != "sample") e.push_back({"mode", "must be mmse or sample, got '" + mode + "'"});
  return e;
}

// estimate_noise_sigma (declared in diffuse/denoise.h too) is defined in pipelines/denoise.cpp.

DenoiseResult denoise(const Model& model, const DenoiseRequest& request, const GenerateHooks& hooks) {
  auto errors = request.validate();
  if (!errors.empty()) throw RequestError(std::move(errors));
  Model::Impl& m = model_impl(model);
  const ModelInfo& info = model.info();
  if (info.kind == ModelKind::StableDiffusion || info.latent)
    throw RequestError("model", info.name +
                                    " samples the latent space of a VAE: noise in pixels is not the Gaussian "
                                    "latent noise its denoiser removes, so denoising needs a pixel-space model");
  const PixelPipeline& pipe = *m.pixel;
  // The model's recommended sampler and steps, then the library defaults; guidance does not apply.
  GenerationRequest g = sampling_of(request);
  for (const auto& f : model.validate(g))
    if (f.field == "class") throw RequestError(f.field, f.message);
  g = model.resolve(g);
  DenoiseRequest r = request;
  r.sampler = g.sampler;
  r.schedule = g.schedule;
  r.steps = g.steps;
  r.eta = g.eta;
  if (r.seed < 0) r.seed = static_cast<int64_t>(std::random_device{}());

  Image img;
  try {
    img = decode_image(request.image, "image");
  } catch (const Error& e) {
    throw RequestError("image", e.what());
  }
  const int c = pipe.channels(), s = pipe.image_size();
  if (img.channels != c || img.width != s || img.height != s)
    throw RequestError("image", "the model denoises " + std::to_string(s) + "x" + std::to_string(s) + " images with " +
                                    std::to_string(c) + (c == 1 ? " channel (grey)" : " channels (RGB)") +
                                    "; this image is " + std::to_string(img.width) + "x" + std::to_string(img.height) +
                                    " with " + std::to_string(img.channels) + " channel" +
                                    (img.channels == 1 ? "" : "s"));
  const torch::Tensor x = to_tensor(img).unsqueeze(0);

  DenoiseResult res;
  res.estimated_sigma = estimate_noise_sigma(x);
  res.sigma_estimated = !request.sigma;
  res.sigma = request.sigma ? *request.sigma : res.estimated_sigma;
  if (!(res.sigma > 0))
    throw RequestError("sigma",
                       "the image shows no noise to estimate (estimate " + std::to_string(res.sigma) + "): give sigma");
  DenoiseOptions o;
  o.sigma = res.sigma;
  o.sample = r.mode == "sample";
  o.class_label = r.class_label.empty() ? -1 : pipe.class_index(r.class_label);
  o.sampler = r.sampler;
  o.schedule = r.schedule;
  o.steps = *r.steps;
  o.seed = static_cast<uint64_t>(r.seed);
  o.rng = r.rng;
  o.eta = r.eta ? *r.eta : NAN;
  o.s_noise = r.s_noise;
  const auto start = std::chrono::steady_clock::now();
  o.callback = [&](const StepInfo& st) {
    if (hooks.cancel.cancelled()) throw Cancelled();
    if (!hooks.progress) return;
    ProgressInfo p;
    p.step = st.step + 1;
    p.total = st.total;
    p.sigma = st.sigma_next;
    p.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    p.eta_s = p.elapsed_s / p.step * (p.total - p.step);
    hooks.progress(p);
  };
  std::lock_guard<std::mutex> lock(m.mu);
  if (hooks.cancel.cancelled()) throw Cancelled();
  with_request_errors([&] { res.image = denoise(pipe, x, o)[0]; });
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  res.request = r;
  res.infotext = denoise_infotext(res, info.name, info.classes);
  return res;
}

}  // namespace diffuse
