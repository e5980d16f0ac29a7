// generate() for class-conditional and unconditional pipelines: txt2img, img2img (SDEdit),
// DDIM-inversion class transfer, and inpainting / outpainting (RePaint or masked blend).
#include <cmath>

#include "core/error.h"
#include "diffusion/inversion.h"
#include "diffusion/repaint.h"
#include "diffusion/sigmas.h"
#include "pipelines/batch.h"
#include "pipelines/image_noise.h"
#include "pipelines/pixel_pipeline.h"
#include "pipelines/sampling_plan.h"

namespace diffuse {

namespace {

std::string shape_str(int64_t c, int64_t h, int64_t w) {
  return "[1 or n, " + std::to_string(c) + ", " + std::to_string(h) + ", " + std::to_string(w) + "]";
}

// Checks the options that do not depend on the batch; returns the image size (height, width).
std::pair<int, int> check_options(const PixelPipeline& pipe, const GenerateOptions& opt) {
  if (opt.n < 1) throw Error("-n " + std::to_string(opt.n) + ": must be at least 1");
  if (!opt.classes.empty() && static_cast<int>(opt.classes.size()) != opt.n)
    throw Error("generate: one class per image expected");
  if (opt.class_weights.defined() &&
      (!pipe.class_conditional() || opt.class_weights.dim() != 2 || opt.class_weights.size(0) != opt.n ||
       opt.class_weights.size(1) != pipe.net.class_embeddings()))
    throw Error("generate: class_weights must be [n, " + std::to_string(pipe.net.class_embeddings()) +
                "] for a class-conditional model");
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
  int h = opt.height, w = opt.width;
  if (opt.image.defined() && opt.image.dim() == 4) {
    if (h == 0) h = static_cast<int>(opt.image.size(2));
    if (w == 0) w = static_cast<int>(opt.image.size(3));
  }
  if (h == 0) h = pipe.image_size();
  if (w == 0) w = pipe.image_size();
  const int step = pipe.size_step();
  if (h <= 0 || w <= 0 || h % step || w % step)
    throw Error("width/height " + std::to_string(w) + "x" + std::to_string(h) + ": must be positive multiples of " +
                std::to_string(step) + " for this model");
  const int f = pipe.image_size() / pipe.latent_size();
  if (opt.noise.defined() && opt.noise.sizes() != torch::IntArrayRef({opt.n, pipe.latent_channels(), h / f, w / f}))
    throw Error("generate: noise must be [n, " + std::to_string(pipe.latent_channels()) + ", " + std::to_string(h / f) +
                ", " + std::to_string(w / f) + "]");
  if (!(opt.strength >= 0 && opt.strength <= 1)) throw Error("strength must lie in [0, 1]");
  if (opt.image.defined() && (opt.image.dim() != 4 || opt.image.size(1) != pipe.channels() || opt.image.size(2) != h ||
                              opt.image.size(3) != w))
    throw Error("image: expected " + shape_str(pipe.channels(), h, w) + ", got " + c10::str(opt.image.sizes()));
  if (opt.mask.defined()) {
    if (!opt.image.defined()) throw Error("mask: inpainting needs an init image");
    if (opt.mask.dim() != 4 || opt.mask.size(1) != 1 || opt.mask.size(2) != h || opt.mask.size(3) != w)
      throw Error("mask: expected " + shape_str(1, h, w) + " (the image's size), got " + c10::str(opt.mask.sizes()));
    if (opt.inpaint != "repaint" && opt.inpaint != "blend")
      throw Error("inpaint_method '" + opt.inpaint + "': must be repaint or blend");
  }
  if (opt.invert_from >= 0) {
    if (!opt.image.defined()) throw Error("invert_from: needs an init image");
    if (!pipe.class_conditional()) throw Error("invert_from: this model is unconditional (it has no classes)");
    if (opt.invert_from >= pipe.net.class_embeddings()) throw Error("invert_from: class out of range");
    if (opt.mask.defined()) throw Error("invert_from: not with a mask (inpainting)");
  }
  return {h, w};
}

// Wraps a step callback so that several phases (inversion, then sampling) count as one run.
StepCallback phase_callback(const StepCallback& cb, int offset, int total) {
  if (!cb) return cb;
  return [cb, offset, total](const StepInfo& s) {
    StepInfo t = s;
    t.step = s.step + offset;
    t.total = total;
    cb(t);
  };
}

torch::Tensor resize_area(const torch::Tensor& m, int64_t h, int64_t w) {
  if (m.size(2) == h && m.size(3) == w) return m;
  namespace F = torch::nn::functional;
  return F::interpolate(m, F::InterpolateFuncOptions().size(std::vector<int64_t>{h, w}).mode(torch::kArea));
}

}  // namespace

GenerateResult generate(const PixelPipeline& pipe, const GenerateOptions& opt) {
  const auto [height, width] = check_options(pipe, opt);
  const int f = pipe.image_size() / pipe.latent_size();
  const int64_t c = pipe.latent_channels(), lh = height / f, lw = width / f;
  const bool editing = opt.image.defined();
  const bool repaint = opt.mask.defined() && opt.inpaint == "repaint";
  const bool inverting = opt.invert_from >= 0;
  const auto& cfg = pipe.scheduler;

  SamplingPlan plan = make_sampling_plan(cfg, opt.sampler, opt.schedule, opt.sigmas, opt.steps, PlanStyle::KDiffusion);
  const SamplerDesc& sampler = *plan.sampler;
  torch::Tensor sigmas = plan.sigmas;
  const bool from_noise = !editing || (opt.strength >= 1.0 && !inverting);  // strength 1 ignores the image
  if (editing && !repaint && !from_noise) sigmas = truncate_sigmas(sigmas, opt.strength);
  const double s0 = sigmas[0].item<double>(), s_last = sigmas[-1].item<double>();
  // RePaint clamps x0 itself (its step keeps the unclamped noise direction, as diffusers' does)
  CondDenoiser d = repaint ? pipe.denoiser(true, false, opt.dtype)
                           : pipe.denoiser(plan.quantize, plan.denoiser_clamps(cfg), opt.dtype);
  CondDenoiser guide_d = opt.guide ? opt.guide->denoiser(false, true, opt.dtype) : CondDenoiser();
  const bool guided = opt.guidance != 1.0;

  if (opt.shards < 1 || opt.shard < 0 || opt.shard >= opt.shards)
    throw Error("shard " + std::to_string(opt.shard) + " of " + std::to_string(opt.shards) + ": out of range");
  // zeros: the rows of other shards' batches stay zero
  auto samples = torch::zeros({opt.n, pipe.channels(), height, width});
  torch::Tensor latents_all = pipe.latent() ? torch::zeros({opt.n, c, lh, lw}) : torch::Tensor();
  auto noise_all = torch::zeros({opt.n, c, lh, lw});
  torch::Tensor mask;
  if (opt.mask.defined()) mask = opt.mask.to(torch::kFloat32).clamp(0, 1);
  torch::NoGradGuard no_grad;
  const int bs = std::max(1, opt.batch_size);
  for (int start = 0, batch = 0; start < opt.n; start += bs, ++batch) {
    if (batch % opt.shards != opt.shard) continue;
    const int end = std::min(opt.n, start + bs), b = end - start;
    PerImageNoise gen(opt.rng, opt.seed + static_cast<uint64_t>(start), b);
    torch::Tensor n0;
    if (opt.noise.defined()) {
      n0 = opt.noise.slice(0, start, end).to(torch::kFloat32);
    } else {
      std::vector<torch::Tensor> noise;
      for (int i = 0; i < b; ++i) noise.push_back(gen.randn(static_cast<size_t>(i), {c, lh, lw}));
      n0 = torch::stack(noise);
    }
    noise_all.slice(0, start, end).copy_(n0);
    n0 = n0.to(pipe.device);

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
          guide_labels.assign(static_cast<size_t>(b), opt.guide->null_class);
        guide_cond.tensors["class_labels"] = torch::tensor(guide_labels, torch::kInt64).to(opt.guide->device);
        if (opt.class_weights.defined() && !labels.empty() && !opt.guide_unconditional &&
            opt.guide->net.class_embeddings() == pipe.net.class_embeddings())
          guide_cond.tensors["class_labels"] = cond.get("class_labels").to(opt.guide->device);
      }
      den = autoguidance(den, bind(guide_d, guide_cond), opt.guidance);
    } else if (guided) {
      auto null_labels = torch::full({b}, pipe.null_class, torch::kInt64);
      if (opt.class_weights.defined())  // the same layout as the conditional branch (concatenated with it)
        null_labels = torch::one_hot(null_labels, pipe.net.class_embeddings()).to(torch::kFloat32);
      Cond uncond{{{"class_labels", null_labels.to(pipe.device)}}};
      den = cfg_denoiser(d, cond, uncond, opt.guidance, opt.cfg_rescale, parse_prediction(cfg.prediction_type));
    }
    if (guided && (opt.guidance_sigma_lo > 0 || std::isfinite(opt.guidance_sigma_hi)))
      den = guidance_interval(den, bind(d, cond), opt.guidance_sigma_lo, opt.guidance_sigma_hi);

    SamplerOptions so;
    if (!std::isnan(opt.eta)) so.eta = opt.eta;  // otherwise the sampler's default
    so.s_noise = opt.s_noise;
    so.noise = &gen;
    so.callback = opt.callback;
    so.x0_clamp = plan.x0_clamp;

    torch::Tensor img, init, lmask, out;
    if (editing) {
      img = batch_rows(opt.image, opt.n, start, end, "image").to(torch::kFloat32);
      init = pipe.encode(img);
    }
    if (opt.mask.defined()) lmask = resize_area(batch_rows(mask, opt.n, start, end, "mask"), lh, lw).to(pipe.device);

    if (repaint) {
      RePaintOptions ro;
      ro.steps = opt.steps;
      ro.jump_length = opt.jump_length;
      ro.jump_n_sample = opt.jump_n_sample;
      ro.eta = std::isnan(opt.eta) ? 0.0 : opt.eta;
      ro.x0_clamp = cfg.clip_sample ? cfg.clip_sample_range : 0.0;
      ro.noise = &gen;
      ro.callback = opt.callback;
      out = sample_repaint(den, n0, init, lmask, make_betas(cfg).to(pipe.device),
                           DiscreteSchedule(cfg).alphas_cumprod().to(pipe.device), ro);
    } else if (inverting) {
      // DDIM inversion under the image's class, then back under the target class
      Cond source;
      source.tensors["class_labels"] = torch::full({b}, opt.invert_from, torch::kInt64).to(pipe.device);
      auto up = sigmas.slice(0, 0, sigmas.size(0) - (s_last > 0 ? 0 : 1)).flip(0);
      const int n_inv = static_cast<int>(up.size(0)) - 1, n_back = static_cast<int>(sigmas.size(0)) - 1;
      torch::Tensor x = init;
      if (n_inv > 0)
        x = invert_ddim(bind(d, source), init, up, phase_callback(opt.callback, 0, n_inv + n_back), opt.invert_refine);
      so.callback = phase_callback(opt.callback, n_inv, n_inv + n_back);
      out = n_back > 0 ? sampler.fn(den, x, sigmas.to(pipe.device), so) : x;
      if (s_last > 0) out = out / std::sqrt(1 + s_last * s_last);
    } else if (editing && !from_noise && sigmas.size(0) < 2) {
      out = init;  // strength 0: nothing to re-run
    } else {
      torch::Tensor x = from_noise ? n0 * plan.init_scale(s0) : init + s0 * n0;
      if (lmask.defined()) {
        // masked blend: the known region's x0 is the init image's
        Denoiser inner = den;
        den = [inner, lmask, init](const torch::Tensor& xx, const torch::Tensor& s) {
          return inner(xx, s) * lmask + init * (1 - lmask);
        };
      }
      out = sampler.fn(den, x, sigmas.to(pipe.device), so);
      if (s_last > 0) out = out / std::sqrt(1 + s_last * s_last);  // diffusers' DDIM ends in VP coordinates
      if (lmask.defined()) out = out * lmask + init * (1 - lmask);
    }
    if (pipe.latent()) latents_all.slice(0, start, end).copy_(out.to(torch::kCPU, torch::kFloat32));
    auto pixels = pipe.decode(out).to(torch::kCPU, torch::kFloat32);
    if (opt.mask.defined()) {  // the kept region is the input's own pixels
      auto m = batch_rows(mask, opt.n, start, end, "mask");
      pixels = m * pixels + (1 - m) * img.to(torch::kCPU);
    }
    samples.slice(0, start, end).copy_(pixels);
  }
  return {samples, noise_all, latents_all};
}

}  // namespace diffuse
