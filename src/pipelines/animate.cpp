#include "pipelines/animate.h"

#include <algorithm>
#include <cmath>

#include "core/animation.h"
#include "core/error.h"
#include "core/font5x7.h"
#include "pipelines/image_noise.h"

namespace diffuse {

torch::Tensor seed_noise(const PixelPipeline& pipe, const std::string& rng, uint64_t seed) {
  PerImageNoise noise(rng, seed, 1);
  return noise.randn(0, {pipe.latent_channels(), pipe.latent_size(), pipe.latent_size()});
}

std::vector<TrajectoryState> sample_trajectory(const PixelPipeline& pipe, GenerateOptions opt,
                                               const std::vector<int>& keep) {
  if (opt.n != 1) throw Error("sample_trajectory: one sample (n = 1)");
  std::vector<TrajectoryState> kept;  // latents or pixels until decoded
  torch::Tensor prev;                 // x_i before step i
  int total = 0;
  auto wanted = [&](int i) { return std::find(keep.begin(), keep.end(), i) != keep.end(); };
  const torch::Tensor n0 = opt.noise.defined() ? opt.noise[0] : seed_noise(pipe, opt.rng, opt.seed);
  StepCallback outer = opt.callback;
  opt.callback = [&](const StepInfo& s) {
    if (s.step == 0) prev = n0.unsqueeze(0) * s.sigma;
    total = s.total;
    if (wanted(s.step))
      kept.push_back({s.step, s.sigma, prev[0].to(torch::kCPU, torch::kFloat32) / std::sqrt(1 + s.sigma * s.sigma),
                      s.denoised[0].to(torch::kCPU, torch::kFloat32)});
    prev = s.x.detach();
    if (outer) outer(s);
  };
  GenerateResult r = generate(pipe, opt);
  for (int i : keep)
    if (i < 0 || i > total)
      throw Error("trajectory: state " + std::to_string(i) + " outside the run's 0.." + std::to_string(total));
  if (wanted(total)) {
    auto last = pipe.latent() ? r.latents[0] : r.samples[0];
    kept.push_back({total, 0.0, last, last});
  }
  if (pipe.latent()) {
    // one decode for every kept latent
    std::vector<torch::Tensor> z;
    for (const auto& k : kept) z.insert(z.end(), {k.x, k.x0});
    auto img = pipe.decode(torch::stack(z)).to(torch::kCPU, torch::kFloat32);
    for (size_t i = 0; i < kept.size(); ++i) {
      kept[i].x = img[static_cast<int64_t>(2 * i)];
      kept[i].x0 = img[static_cast<int64_t>(2 * i + 1)];
    }
  }
  return kept;
}

torch::Tensor slerp(const torch::Tensor& a, const torch::Tensor& b, double t) {
  auto fa = a.to(torch::kFloat64).flatten(), fb = b.to(torch::kFloat64).flatten();
  const double cos_omega = std::clamp((fa.dot(fb) / (fa.norm() * fb.norm())).item<double>(), -1.0, 1.0);
  const double omega = std::acos(cos_omega);
  torch::Tensor out;
  if (std::sin(omega) < 1e-6) {
    out = (1 - t) * fa + t * fb;
  } else {
    out = (std::sin((1 - t) * omega) * fa + std::sin(t * omega) * fb) / std::sin(omega);
  }
  return out.reshape(a.sizes()).to(a.scalar_type());
}

torch::Tensor interpolation_samples(const PixelPipeline& pipe, GenerateOptions opt, uint64_t seed_a, uint64_t seed_b,
                                    int64_t class_a, int64_t class_b, int frames) {
  if (frames < 2) throw Error("frames " + std::to_string(frames) + ": an interpolation needs at least 2");
  const auto na = seed_noise(pipe, opt.rng, seed_a), nb = seed_noise(pipe, opt.rng, seed_b);
  const int64_t k = pipe.net.class_embeddings();
  opt.n = 1;
  opt.seed = seed_a;
  opt.classes.clear();
  std::vector<torch::Tensor> out;
  for (int i = 0; i < frames; ++i) {
    const double t = static_cast<double>(i) / (frames - 1);
    opt.noise = slerp(na, nb, t).unsqueeze(0);
    if (pipe.class_conditional()) {
      if (class_a < 0 || class_a >= k || class_b < 0 || class_b >= k)
        throw Error("class: outside the model's " + std::to_string(k) + " class embeddings");
      auto w = torch::zeros({1, k});
      w[0][class_a] += 1 - t;
      w[0][class_b] += t;
      opt.class_weights = w;
    }
    out.push_back(generate(pipe, opt).samples[0]);
  }
  return torch::stack(out);
}

std::vector<int> spread_frames(int frames, int states) {
  if (frames < 1 || states < 1) throw Error("spread_frames: needs frames and states");
  std::vector<int> out;
  for (int i = 0; i < frames; ++i)
    out.push_back(frames == 1 ? states - 1 : static_cast<int>(std::lround(double(i) * (states - 1) / (frames - 1))));
  return out;
}

Image compose_frame(const std::vector<torch::Tensor>& panels, int factor, const std::string& caption) {
  if (panels.empty()) throw Error("compose_frame: no panels");
  std::vector<Image> imgs;
  for (const auto& p : panels)
    imgs.push_back(upscale_nearest(to_image(p.detach().to(torch::kCPU).clamp(-1, 1)), factor));
  const int ch = imgs[0].channels, pw = imgs[0].width, ph = imgs[0].height, n = static_cast<int>(imgs.size());
  const int top = caption.empty() ? 0 : kCaptionHeight;
  Image out{n * pw + (n - 1) * kPanelGap, ph + top, ch, {}};
  out.data.assign(static_cast<size_t>(out.width) * out.height * ch, 255);
  for (int i = 0; i < n; ++i) {
    if (imgs[i].channels != ch || imgs[i].width != pw || imgs[i].height != ph)
      throw Error("compose_frame: panels of different shapes");
    for (int y = 0; y < ph; ++y)
      std::copy_n(&imgs[i].data[static_cast<size_t>(y) * pw * ch], static_cast<size_t>(pw) * ch,
                  &out.data[(static_cast<size_t>(y + top) * out.width + i * (pw + kPanelGap)) * ch]);
  }
  // the caption in black, 2 px from the top-left corner, clipped at the right edge
  for (size_t g = 0; g < caption.size(); ++g)
    for (int col = 0; col < font5x7::kGlyphWidth; ++col)
      for (int row = 0; row < font5x7::kGlyphHeight; ++row) {
        const int x = 2 + static_cast<int>(g) * (font5x7::kGlyphWidth + 1) + col, y = 2 + row;
        if (x < out.width && font5x7::pixel(caption[g], col, row))
          std::fill_n(&out.data[(static_cast<size_t>(y) * out.width + x) * ch], ch, uint8_t{0});
      }
  return out;
}

}  // namespace diffuse
