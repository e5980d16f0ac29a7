#include "train/diffusion_objective.h"

#include "core/error.h"
#include "diffusion/schedule.h"

namespace diffuse {

DiffusionObjective::DiffusionObjective(torch::Tensor alphas_cumprod, DiffusionObjectiveOptions options)
    : alphas_cumprod_(std::move(alphas_cumprod)), opt_(std::move(options)), pred_(parse_prediction(opt_.prediction)) {
  if (!alphas_cumprod_.defined() || alphas_cumprod_.dim() != 1 || alphas_cumprod_.size(0) < 1)
    throw Error("diffusion objective: alphas_cumprod must be a non-empty vector");
  if (!(opt_.class_dropout >= 0 && opt_.class_dropout < 1))
    throw Error("class_dropout " + std::to_string(opt_.class_dropout) + ": must be in [0, 1)");
  if (opt_.min_snr_gamma < 0) throw Error("min_snr_gamma must be >= 0");
}

DiffusionDraw DiffusionObjective::draw(const torch::Tensor& x0, const torch::Tensor& labels, at::Generator& gen,
                                       BatchSlice slice) const {
  const int64_t B = x0.size(0);
  const int64_t total = slice.total > 0 ? slice.total : B;
  if (slice.offset < 0 || slice.offset + B > total)
    throw Error("diffusion objective: rows [" + std::to_string(slice.offset) + ", " + std::to_string(slice.offset + B) +
                ") outside a batch of " + std::to_string(total));
  auto mine = [&](const torch::Tensor& all) { return all.narrow(0, slice.offset, B); };
  const auto device = x0.device();
  DiffusionDraw d;
  d.t = mine(torch::randint(num_train_timesteps(), {total}, gen, torch::kInt64)).to(device);
  auto shape = x0.sizes().vec();
  shape[0] = total;
  d.noise = mine(torch::randn(shape, gen)).to(device);
  if (labels.defined()) {
    d.labels = labels.to(torch::kCPU, torch::kInt64).clone();
    if (opt_.null_class >= 0 && opt_.class_dropout > 0) {
      auto drop = mine(torch::rand({total}, gen)) < opt_.class_dropout;
      d.labels.masked_fill_(drop, opt_.null_class);
    }
    d.labels = d.labels.to(device);
  } else if (opt_.always_null) {
    d.labels = torch::full({B}, opt_.null_class, torch::kInt64).to(device);
  }
  d.xt = add_noise(alphas_cumprod_, x0, d.noise, d.t);
  d.target = prediction_target(opt_.prediction, alphas_cumprod_, x0, d.noise, d.t);
  return d;
}

torch::Tensor DiffusionObjective::weights(const torch::Tensor& t) const {
  if (opt_.min_snr_gamma <= 0) return torch::ones({t.size(0)}, alphas_cumprod_.options());
  auto a = alphas_cumprod_.index_select(0, t.to(alphas_cumprod_.device()));
  auto snr = a / (1 - a);
  auto clipped = torch::clamp_max(snr, opt_.min_snr_gamma);
  return pred_ == Prediction::Epsilon ? clipped / snr : pred_ == Prediction::V ? clipped / (snr + 1) : clipped;
}

torch::Tensor DiffusionObjective::loss(const torch::Tensor& output, const DiffusionDraw& draw) const {
  auto per_sample = (output - draw.target).pow(2).mean({1, 2, 3});
  if (opt_.min_snr_gamma > 0) per_sample = per_sample * weights(draw.t);
  return per_sample.mean();
}

}  // namespace diffuse
