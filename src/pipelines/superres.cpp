#include "pipelines/superres.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/json_file.h"
#include "diffusion/sigmas.h"
#include "pipelines/image_noise.h"

namespace fs = std::filesystem;
namespace F = torch::nn::functional;

namespace diffuse {

torch::Tensor sr_downsample(const torch::Tensor& hr, int scale) {
  if (scale < 1) throw Error("scale " + std::to_string(scale) + ": must be at least 1");
  if (hr.dim() != 4 || hr.size(2) % scale != 0 || hr.size(3) % scale != 0)
    throw Error("super-resolution: image sides must be divisible by the scale " + std::to_string(scale));
  if (scale == 1) return hr;
  return F::avg_pool2d(hr, F::AvgPool2dFuncOptions(scale).stride(scale));
}

torch::Tensor sr_upsample(const torch::Tensor& lr, int scale) {
  if (scale < 1) throw Error("scale " + std::to_string(scale) + ": must be at least 1");
  if (scale == 1) return lr;
  return F::interpolate(lr, F::InterpolateFuncOptions()
                                .size(std::vector<int64_t>{lr.size(2) * scale, lr.size(3) * scale})
                                .mode(torch::kBicubic)
                                .align_corners(false));
}

torch::Tensor sr_condition(const torch::Tensor& hr, int scale) { return sr_upsample(sr_downsample(hr, scale), scale); }

torch::Tensor superres_input(const torch::Tensor& x, const torch::Tensor& condition) {
  if (!condition.defined() || condition.sizes() != x.sizes())
    throw Error("super-resolution: the conditioning image must have the shape of the sample");
  return torch::cat({x, condition.to(x.dtype())}, 1);
}

bool is_superres_folder(const std::string& dir) { return fs::is_regular_file(dir + "/superres.json"); }

SuperResConfig read_superres_config(const std::string& path) {
  auto j = read_json_file(path);
  SuperResConfig c;
  try {
    if (j.value("task", std::string("superres")) != "superres") throw Error(path + ": task is not superres");
    c.scale = j.at("scale").get<int>();
    c.low_resolution_size = j.at("low_resolution_size").get<int>();
    c.high_resolution_size = j.at("high_resolution_size").get<int>();
    c.channels = j.at("channels").get<int>();
    c.downsample = j.value("downsample", std::string("area"));
    c.upsample = j.value("upsample", std::string("bicubic"));
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": " + e.what());
  }
  if (c.scale < 2 || c.scale > 16 || c.channels < 1 || c.channels > 4 || c.low_resolution_size < 1 ||
      c.high_resolution_size != c.low_resolution_size * c.scale)
    throw Error(path + ": inconsistent scale, sizes or channels");
  if (c.downsample != "area" || c.upsample != "bicubic")
    throw Error(path + ": only area downsampling and bicubic upsampling are supported");
  return c;
}

void write_superres_config(const std::string& path, const SuperResConfig& c) {
  nlohmann::json j = {{"task", "superres"},
                      {"scale", c.scale},
                      {"low_resolution_size", c.low_resolution_size},
                      {"high_resolution_size", c.high_resolution_size},
                      {"channels", c.channels},
                      {"downsample", c.downsample},
                      {"upsample", c.upsample}};
  write_file_atomically(path, j.dump(2) + "\n");
}

SuperResPipeline SuperResPipeline::load(const std::string& dir, torch::Device device) {
  if (!is_superres_folder(dir))
    throw Error(dir + ": not a super-resolution model (no superres.json; train one with --task superres)");
  SuperResPipeline sr;
  sr.config = read_superres_config(dir + "/superres.json");
  sr.pipe = PixelPipeline::load(dir, device);
  const auto& n = sr.pipe.net;
  if (n.is_dit() || sr.pipe.latent() || n.in_channels() != 2 * sr.config.channels ||
      n.sample_size() != sr.config.high_resolution_size)
    throw Error(dir + ": the network does not match superres.json (expected a pixel UNet2DModel with in_channels " +
                std::to_string(2 * sr.config.channels) + " and sample_size " +
                std::to_string(sr.config.high_resolution_size) + ")");
  return sr;
}

void SuperResPipeline::save(const std::string& dir) const {
  pipe.save(dir);
  write_superres_config(dir + "/superres.json", config);
}

CondDenoiser SuperResPipeline::denoiser() const {
  DiffusionNet n = pipe.net;
  ModelFn model = [n](const torch::Tensor& x, const torch::Tensor& t, const Cond& cond) {
    return n.forward(superres_input(x, cond.get("low_res")), t, torch::Tensor());
  };
  const auto& s = pipe.scheduler;
  DiscreteDenoiserOptions o;
  if (s.clip_sample) o.clip_sample_range = s.clip_sample_range;
  return discrete_denoiser(model, DiscreteSchedule(s), parse_prediction(s.prediction_type), o);
}

std::vector<int64_t> tile_origins(int64_t size, int64_t tile, int64_t overlap) {
  if (tile < 1 || overlap < 0 || overlap >= tile) throw Error("tile_overlap must be in [0, tile size)");
  if (size <= tile) return {0};
  const int64_t stride = tile - overlap;
  const int64_t n = (size - tile + stride - 1) / stride + 1;
  std::vector<int64_t> o;
  for (int64_t k = 0; k < n; ++k) o.push_back((k * (size - tile) + (n - 1) / 2) / (n - 1));
  return o;
}

namespace {

// Blend weights of one tile side: a linear ramp over `overlap` pixels at both ends, never zero.
torch::Tensor ramp(int64_t tile, int64_t overlap) {
  auto i = torch::arange(tile, torch::kFloat32);
  auto up = (i + 1) / static_cast<double>(overlap + 1);
  auto down = (tile - i) / static_cast<double>(overlap + 1);
  return torch::clamp_max(torch::minimum(up, down), 1.0);
}

}  // namespace

CondDenoiser tiled_denoiser(CondDenoiser d, int64_t tile, int64_t overlap, int tile_batch) {
  const int64_t tb = std::max(1, tile_batch);
  return [d, tile, overlap, tb](const torch::Tensor& x, const torch::Tensor& sigma, const Cond& cond) {
    const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
    if (H < tile || W < tile) throw Error("tiled denoiser: the canvas is smaller than a tile");
    if (H == tile && W == tile) return d(x, sigma, cond);
    const auto ys = tile_origins(H, tile, overlap), xs = tile_origins(W, tile, overlap);
    const auto r = ramp(tile, overlap).to(x.device());
    const auto w2 = (r.unsqueeze(1) * r.unsqueeze(0)).to(x.dtype());  // [tile, tile]
    auto acc = torch::zeros_like(x);
    auto wsum = torch::zeros({1, 1, H, W}, x.options());
    std::vector<std::pair<int64_t, int64_t>> tiles;
    for (auto y : ys)
      for (auto xo : xs) tiles.emplace_back(y, xo);
    for (size_t start = 0; start < tiles.size(); start += static_cast<size_t>(tb)) {
      const size_t end = std::min(tiles.size(), start + static_cast<size_t>(tb));
      std::vector<torch::Tensor> xt, st;
      Cond c;
      std::map<std::string, std::vector<torch::Tensor>> parts;
      for (size_t k = start; k < end; ++k) {
        auto [y, xo] = tiles[k];
        xt.push_back(x.slice(2, y, y + tile).slice(3, xo, xo + tile));
        st.push_back(sigma);
        for (const auto& [key, v] : cond.tensors) parts[key].push_back(v.slice(2, y, y + tile).slice(3, xo, xo + tile));
      }
      for (auto& [key, v] : parts) c.tensors[key] = torch::cat(v, 0);
      auto out = d(torch::cat(xt, 0), torch::cat(st, 0), c);
      for (size_t k = start; k < end; ++k) {
        auto [y, xo] = tiles[k];
        const int64_t i = static_cast<int64_t>(k - start);
        acc.slice(2, y, y + tile).slice(3, xo, xo + tile) += out.slice(0, i * B, (i + 1) * B) * w2;
        wsum.slice(2, y, y + tile).slice(3, xo, xo + tile) += w2;
      }
    }
    return acc / wsum;
  };
}

namespace {

torch::Tensor upscale_sigmas(const SuperResPipeline& sr, const UpscaleOptions& opt) {
  if (!opt.sigmas.empty()) return parse_sigmas(opt.sigmas);
  if (opt.steps < 1) throw Error("steps " + std::to_string(opt.steps) + ": must be at least 1");
  std::string hint;
  find_sampler(opt.sampler, &hint);
  const std::string schedule = !opt.schedule.empty() ? opt.schedule : (!hint.empty() ? hint : "discrete");
  return make_sigmas(schedule, opt.steps, DiscreteSchedule(sr.pipe.scheduler), sr.pipe.scheduler);
}

}  // namespace

torch::Tensor upscale(const SuperResPipeline& sr, const torch::Tensor& low_res, int scale, const UpscaleOptions& opt) {
  const auto& cfg = sr.config;
  if (scale != cfg.scale)
    throw Error("scale " + std::to_string(scale) + ": this model was trained for scale " + std::to_string(cfg.scale) +
                " only");
  if (low_res.dim() != 4 || low_res.size(1) != cfg.channels)
    throw Error("image: the model expects " + std::to_string(cfg.channels) + "-channel images, got " +
                (low_res.dim() == 4 ? std::to_string(low_res.size(1)) + " channels" : "a tensor that is not NCHW"));
  const int64_t tile = cfg.high_resolution_size;
  if (opt.tile_overlap < 0 || opt.tile_overlap > tile / 2)
    throw Error("tile_overlap " + std::to_string(opt.tile_overlap) + ": must be in [0, " + std::to_string(tile / 2) +
                "]");
  const SamplerDesc& sampler = find_sampler(opt.sampler);
  const torch::Tensor sigmas = upscale_sigmas(sr, opt).to(sr.pipe.device);
  const int64_t N = low_res.size(0), C = cfg.channels;
  const int64_t H = low_res.size(2) * scale, W = low_res.size(3) * scale;
  const int64_t Hp = std::max(H, tile), Wp = std::max(W, tile);
  torch::NoGradGuard no_grad;
  auto cond = sr_upsample(low_res.to(torch::kCPU, torch::kFloat32), scale);
  if (Hp != H || Wp != W) cond = F::pad(cond, F::PadFuncOptions({0, Wp - W, 0, Hp - H}).mode(torch::kReplicate));
  const CondDenoiser d = tiled_denoiser(sr.denoiser(), tile, opt.tile_overlap, opt.tile_batch);
  auto result = torch::empty({N, C, H, W});
  const int64_t bs = std::max(1, opt.batch_size);
  for (int64_t start = 0; start < N; start += bs) {
    const int64_t end = std::min(N, start + bs);
    // Image i draws its noise from its own generator (seed + i), whatever batch it is in.
    PerImageNoise noise(opt.rng, opt.seed + static_cast<uint64_t>(start), static_cast<int>(end - start));
    std::vector<torch::Tensor> n0;
    for (int64_t i = start; i < end; ++i) n0.push_back(noise.randn(static_cast<size_t>(i - start), {C, Hp, Wp}));
    SamplerOptions so;
    if (!std::isnan(opt.eta)) so.eta = opt.eta;
    so.s_noise = opt.s_noise;
    so.noise = &noise;
    so.callback = opt.callback;
    Cond c{{{"low_res", cond.slice(0, start, end).to(sr.pipe.device)}}};
    auto x = (torch::stack(n0) * sigmas[0].item<double>()).to(sr.pipe.device);
    auto out = sampler.fn(bind(d, c), x, sigmas, so);
    result.slice(0, start, end).copy_(out.slice(2, 0, H).slice(3, 0, W).to(torch::kCPU, torch::kFloat32));
  }
  return result;
}

torch::Tensor superres_comparison(const torch::Tensor& lr, int scale, const torch::Tensor& upscaled,
                                  const torch::Tensor& hr) {
  auto lr_f = lr.to(torch::kCPU, torch::kFloat32);
  std::vector<torch::Tensor> rows = {lr_f.repeat_interleave(scale, 2).repeat_interleave(scale, 3),
                                     sr_upsample(lr_f, scale), upscaled.to(torch::kCPU, torch::kFloat32)};
  if (hr.defined()) rows.push_back(hr.to(torch::kCPU, torch::kFloat32));
  return torch::cat(rows, 0);
}

std::string upscale_parameters(const SuperResPipeline& sr, const UpscaleOptions& opt, int scale, int64_t width,
                               int64_t height, int index) {
  std::ostringstream o;
  o << "Upscale: " << scale << ", Steps: " << opt.steps << ", Sampler: " << find_sampler(opt.sampler).name;
  if (!opt.schedule.empty()) o << ", Schedule type: " << opt.schedule;
  if (!opt.sigmas.empty()) o << ", Sigmas: \"" << opt.sigmas << "\"";
  if (!std::isnan(opt.eta)) o << ", Eta: " << opt.eta;
  if (opt.s_noise != 1.0) o << ", S noise: " << opt.s_noise;
  if (opt.rng != "cpu") o << ", RNG: " << opt.rng;
  o << ", Seed: " << (opt.seed + static_cast<uint64_t>(index)) << ", Size: " << width << "x" << height
    << ", Tile overlap: " << opt.tile_overlap << ", Model: " << fs::path(sr.pipe.source).filename().string()
    << ", Version: diffuse 0.1.0";
  return o.str();
}

}  // namespace diffuse
