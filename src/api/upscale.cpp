// diffuse::Upscaler: super-resolution models behind the public API (pipelines/superres.h).
#include "diffuse/upscale.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <mutex>

#include "core/error.h"
#include "core/image.h"
#include "core/runtime.h"
#include "diffusion/sampler.h"
#include "pipelines/superres.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {

constexpr int64_t kMaxOutputSide = 4096;

bool known_schedule(const std::string& s) {
  for (const auto& info : list_schedules())
    if (info.name == s) return true;
  return false;
}

// [C, H, W] in [-1, 1] with another channel count, through the 8-bit conversion image files get.
torch::Tensor to_channels(const torch::Tensor& chw, int channels) {
  return to_tensor(convert_channels(to_image(chw), channels));
}

std::string channels_name(int64_t c) {
  return c == 1 ? "1 (grey)" : c == 3 ? "3 (RGB)" : c == 4 ? "4 (RGBA)" : std::to_string(c);
}

}  // namespace

std::vector<FieldError> UpscaleRequest::check() const {
  std::vector<FieldError> e;
  if (!image.defined())
    e.push_back({"image", "required"});
  else if (image.dim() != 3 || image.size(0) < 1 || image.size(0) > 4 || image.size(1) < 1 || image.size(2) < 1)
    e.push_back({"image", "expected a [C, H, W] image with 1 to 4 channels"});
  else if (!image.is_floating_point())
    e.push_back({"image", "expected a float image in [-1, 1]"});
  if (scale < 0 || scale > 16) e.push_back({"scale", std::to_string(scale) + ": must be 0 (the model's) or 2 to 16"});
  try {
    find_sampler(sampler);
  } catch (const Error& ex) {
    e.push_back({"sampler", ex.what()});
  }
  if (!schedule.empty() && !known_schedule(schedule))
    e.push_back({"schedule", schedule + ": unknown (see diffuse samplers)"});
  if (steps < 1 || steps > 1000) e.push_back({"steps", std::to_string(steps) + ": must be in [1, 1000]"});
  if (seed < 0) e.push_back({"seed", "must be >= 0"});
  if (rng != "cpu" && rng != "philox") e.push_back({"rng", rng + ": expected cpu or philox"});
  if (eta && !(*eta >= 0 && *eta <= 10)) e.push_back({"eta", "must be in [0, 10]"});
  if (!(s_noise >= 0 && s_noise <= 10)) e.push_back({"s_noise", "must be in [0, 10]"});
  if (tile_overlap < 0) e.push_back({"tile_overlap", "must be >= 0"});
  return e;
}

bool is_upscaler(const std::string& path) { return is_superres_folder(path); }

struct Upscaler::Impl {
  SuperResPipeline sr;
  UpscalerInfo info;
  std::mutex mu;
};

Upscaler Upscaler::load(const std::string& path, const LoadOptions& options) {
  if (!fs::exists(path)) throw Error(path + ": model not found");
  if (!is_superres_folder(path))
    throw Error(path +
                ": not a super-resolution model (no superres.json; train one with diffuse train --task superres)");
  Upscaler u;
  u.impl_ = std::make_shared<Impl>();
  u.impl_->sr = SuperResPipeline::load(path, parse_device(options.device));
  const auto& c = u.impl_->sr.config;
  auto& info = u.impl_->info;
  info.path = path;
  info.name = fs::path(path).filename().string();
  if (info.name.empty()) info.name = fs::path(path).parent_path().filename().string();
  info.scale = c.scale;
  info.low_resolution_size = c.low_resolution_size;
  info.high_resolution_size = c.high_resolution_size;
  info.channels = c.channels;
  info.downsample = c.downsample;
  info.upsample = c.upsample;
  return u;
}

const UpscalerInfo& Upscaler::info() const { return impl_->info; }

std::vector<FieldError> Upscaler::validate(const UpscaleRequest& r) const {
  auto e = r.check();
  const auto& in = info();
  if (r.scale != 0 && r.scale != in.scale)
    e.push_back({"scale", std::to_string(r.scale) + ": this model was trained for scale " + std::to_string(in.scale) +
                              " only (" + std::to_string(in.low_resolution_size) + " -> " +
                              std::to_string(in.high_resolution_size) + " pixels)"});
  if (r.tile_overlap > in.high_resolution_size / 2)
    e.push_back({"tile_overlap", std::to_string(r.tile_overlap) + ": must be at most " +
                                     std::to_string(in.high_resolution_size / 2) + " (half the model's size)"});
  if (r.image.defined() && r.image.dim() == 3) {
    const int64_t c = r.image.size(0);
    if (c != in.channels && !r.convert_channels)
      e.push_back({"image", "has " + channels_name(c) + " channels but the model expects " +
                                channels_name(in.channels) + " (convert it, or set convert_channels)"});
    if (r.image.size(1) * in.scale > kMaxOutputSide || r.image.size(2) * in.scale > kMaxOutputSide)
      e.push_back({"image", std::to_string(r.image.size(2)) + "x" + std::to_string(r.image.size(1)) +
                                ": the upscaled image would exceed " + std::to_string(kMaxOutputSide) +
                                " pixels a side"});
  }
  return e;
}

UpscaleResult Upscaler::upscale(const UpscaleRequest& request, const GenerateHooks& hooks) const {
  auto errors = validate(request);
  if (!errors.empty()) throw RequestError(errors);
  std::lock_guard<std::mutex> lock(impl_->mu);
  const auto t0 = std::chrono::steady_clock::now();
  const SuperResPipeline& sr = impl_->sr;
  UpscaleRequest r = request;
  r.scale = sr.config.scale;
  torch::Tensor image = r.image.to(torch::kCPU, torch::kFloat32);
  if (image.size(0) != sr.config.channels) image = to_channels(image, sr.config.channels);

  UpscaleOptions o;
  o.sampler = r.sampler;
  o.schedule = r.schedule;
  o.steps = r.steps;
  o.seed = static_cast<uint64_t>(r.seed);
  o.rng = r.rng;
  o.eta = r.eta ? *r.eta : NAN;
  o.s_noise = r.s_noise;
  o.tile_overlap = r.tile_overlap;
  int done = 0;
  o.callback = [&](const StepInfo& s) {
    if (hooks.cancel.cancelled()) throw Cancelled();
    ++done;
    if (!hooks.progress) return;
    ProgressInfo p;
    p.step = done;
    p.total = s.total;
    p.sigma = s.sigma_next;
    p.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    p.eta_s = p.elapsed_s / done * std::max(0, p.total - done);
    if (hooks.preview_every > 0 && (done % hooks.preview_every == 0 || done == p.total) && s.denoised.defined())
      p.preview = s.denoised[0].detach().to(torch::kCPU).clamp(-1, 1);
    hooks.progress(p);
  };
  UpscaleResult res;
  res.image = diffuse::upscale(sr, image.unsqueeze(0), r.scale, o)[0];
  if (!torch::isfinite(res.image).all().item<bool>()) throw Error("the model produced NaN or infinite values");
  res.infotext = upscale_parameters(sr, o, r.scale, res.image.size(2), res.image.size(1), 0);
  res.request = r;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace diffuse
