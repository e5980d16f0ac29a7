// generate() for Stable Diffusion pipelines: txt2img, img2img, inpainting (9-channel UNets, masked
// img2img, only-masked crops), SDXL prompt encoding and time ids, base -> refiner handoff, and the
// A1111 "parameters" text of a generation.
#include "pipelines/sd_generate.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "diffusion/sigmas.h"
#include "pipelines/batch.h"
#include "pipelines/image_noise.h"
#include "pipelines/mask.h"
#include "pipelines/prompt_weights.h"
#include "pipelines/sampling_plan.h"
#include "pipelines/sd_pipeline.h"

namespace fs = std::filesystem;

namespace diffuse {

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
