#include "train/lora_trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/image.h"
#include "core/plot.h"
#include "core/progress.h"
#include "core/runtime.h"
#include "core/safetensors.h"
#include "core/strings.h"
#include "diffusion/denoiser.h"
#include "diffusion/schedule.h"
#include "nn/autocast.h"
#include "pipelines/sd_pipeline.h"
#include "train/adamw.h"
#include "train/captioned.h"
#include "train/checkpoint.h"
#include "train/diffusion_objective.h"
#include "train/loader.h"
#include "train/run_helpers.h"
#include "train/train_loop.h"

namespace fs = std::filesystem;

namespace diffuse {

std::string lora_train_dir(const std::string& out) {
  std::string stem = out;
  if (ends_with(stem, ".safetensors")) stem.resize(stem.size() - 12);
  return stem + "-train";
}

namespace {

void validate_lora_options(const LoraTrainOptions& o) {
  if (o.model.empty()) throw Error("model is required");
  if (o.data.empty()) throw Error("data is required");
  if (o.out.empty() || !ends_with(o.out, ".safetensors"))
    throw Error("out " + o.out + ": expected a .safetensors file");
  if (o.steps < 1) throw Error("steps " + std::to_string(o.steps) + ": must be at least 1");
  if (o.batch < 1) throw Error("batch " + std::to_string(o.batch) + ": must be at least 1");
  if (!(o.lr > 0)) throw Error("lr: must be positive");
  if (o.text_encoder_lr < 0) throw Error("text_encoder_lr: must be >= 0");
  if (o.lr_schedule != "constant" && o.lr_schedule != "cosine")
    throw Error("lr_schedule " + o.lr_schedule + ": expected constant or cosine");
  if (o.caption_dropout < 0 || o.caption_dropout >= 1) throw Error("caption_dropout: must be in [0, 1)");
  if (o.min_snr_gamma < 0) throw Error("min_snr_gamma: must be >= 0");
  if (o.save_every < 0) throw Error("save_every: must be >= 0");
  if (o.sample_every < 0) throw Error("sample_every: must be >= 0");
  if (o.save_dtype != "fp16" && o.save_dtype != "bf16" && o.save_dtype != "fp32")
    throw Error("save_dtype " + o.save_dtype + ": expected fp16, bf16 or fp32");
}

torch::Dtype save_dtype(const std::string& s) {
  return s == "fp16" ? torch::kFloat16 : s == "bf16" ? torch::kBFloat16 : torch::kFloat32;
}

nlohmann::json lora_options_json(const LoraTrainOptions& o) {
  const auto& n = o.network;
  return {{"model", o.model},
          {"data", o.data},
          {"caption_ext", o.caption_ext},
          {"resolution", o.resolution},
          {"buckets", o.buckets},
          {"rank", n.rank},
          {"alpha", n.alpha},
          {"unet_layers", n.unet_layers},
          {"conv", n.conv},
          {"conv_rank", n.conv_rank},
          {"conv_alpha", n.conv_alpha},
          {"lr", o.lr},
          {"text_encoder_lr", o.text_encoder_lr},
          {"lr_schedule", o.lr_schedule},
          {"warmup", o.warmup},
          {"weight_decay", o.weight_decay},
          {"grad_clip", o.grad_clip},
          {"steps", o.steps},
          {"batch", o.batch},
          {"min_snr_gamma", o.min_snr_gamma},
          {"caption_dropout", o.caption_dropout},
          {"bf16", o.bf16},
          {"seed", o.seed}};
}

// Options that change what a checkpoint means: a resumed run keeps them.
const std::vector<std::string> kLoraResumeKeys = {
    "model", "data",      "caption_ext", "resolution",      "buckets",         "rank",  "alpha", "unet_layers",
    "conv",  "conv_rank", "conv_alpha",  "text_encoder_lr", "caption_dropout", "batch", "bf16",  "seed"};

SDPipeline load_base(const LoraTrainOptions& o, torch::Device device) {
  if (!fs::exists(o.model)) throw Error("model " + o.model + ": not found");
  SDPipeline pipe;
  try {
    pipe = load_sd(o.model, device, torch::kFloat32, true);
  } catch (const Error& e) {
    throw Error("model " + std::string(e.what()));
  }
  const auto& c = pipe.unet->config();
  if (c.addition_embed_type || c.class_embed_type || c.num_class_embeds)
    throw Error("model " + o.model + ": not a Stable Diffusion 1.x / 2.x UNet (it has added or class conditioning)");
  if (pipe.is_inpaint_model()) throw Error("model " + o.model + ": an inpainting UNet; train on the base model");
  if (!pipe.text) throw Error("model " + o.model + ": has no text encoder");
  return pipe;
}

// Token ids [B, 77] of the captions.
torch::Tensor tokenize(const SDTextEncoder& te, const std::vector<std::string>& captions) {
  const int64_t len = te.model->config().max_position_embeddings;
  std::vector<int64_t> ids;
  for (const auto& c : captions) {
    auto t = te.tokenizer.tokenize(c, len, true);
    for (int64_t id : t)
      if (id >= te.model->config().vocab_size)
        throw Error("data: caption '" + c + "' has a token outside the text encoder's vocabulary");
    ids.insert(ids.end(), t.begin(), t.end());
  }
  return torch::tensor(ids, torch::kInt64).reshape({static_cast<int64_t>(captions.size()), len});
}

// Per-bucket posterior of the scaled latents: mean and std, encoded once.
struct BucketLatents {
  torch::Tensor mean, std;
};

std::vector<BucketLatents> encode_buckets(const SDPipeline& pipe, const CaptionedDataset& data, bool progress) {
  std::vector<BucketLatents> out;
  Progress bar(data.size(), "encode", "img", progress);
  int64_t done = 0;
  for (const auto& b : data.buckets) {
    std::vector<torch::Tensor> means, stds;
    const int64_t n = b.images.size(0);
    for (int64_t s = 0; s < n; s += 8) {
      auto x = b.images.slice(0, s, std::min(n, s + 8)).to(torch::kFloat32).div(127.5).sub(1.0);
      auto post = pipe.encode(x);
      means.push_back(post.mean.to(torch::kCPU));
      stds.push_back(post.std().to(torch::kCPU));
      done += x.size(0);
      bar.update(done, "", static_cast<double>(x.size(0)), "img");
    }
    out.push_back({torch::cat(means), torch::cat(stds)});
  }
  bar.finish("");
  return out;
}

void plot_loss(const std::string& dir) {
  auto cols = read_csv_columns(dir + "/metrics.csv");
  if (cols["step"].empty()) return;
  PlotOptions po;
  po.title = "LoRA training loss";
  po.xlabel = "step";
  po.ylabel = "loss (EMA-smoothed)";
  po.log_y = true;
  save_plot(dir + "/loss.png", {{"loss", cols["step"], cols["loss"]}}, po);
}

std::string iso_time(std::time_t t) {
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

}  // namespace

LoraTrainResult train_lora(const LoraTrainOptions& opt) {
  validate_lora_options(opt);
  const torch::Device device = parse_device(opt.device);
  const std::string dir = lora_train_dir(opt.out), ckpt_dir = dir + "/checkpoint";
  const nlohmann::json opts_now = lora_options_json(opt);
  const std::optional<CheckpointState> resumed = open_run(dir, opts_now, kLoraResumeKeys, opt.resume, opt.quiet);

  SDPipeline pipe = load_base(opt, device);
  const bool train_text = opt.text_encoder_lr > 0;
  // Frozen base weights: float32, or bf16 (kept 16-bit) with bf16 autocast.
  const torch::Dtype base_dtype = opt.bf16 ? torch::kBFloat16 : torch::kFloat32;
  pipe.unet->set_compute_dtype(std::nullopt);
  pipe.unet->to(base_dtype);
  pipe.text->compute_dtype = std::nullopt;
  pipe.text->model->to(torch::kFloat32);
  for (auto& p : pipe.unet->parameters()) p.set_requires_grad(false);
  for (auto& p : pipe.text->model->parameters()) p.set_requires_grad(false);
  pipe.unet->eval();  // no dropout in SD's UNet; eval keeps the forward deterministic
  pipe.text->model->eval();

  // Data: the model's size step (VAE factor x UNet downsampling) and default resolution.
  CaptionedOptions co;
  co.caption_ext = opt.caption_ext;
  co.resolution = opt.resolution > 0 ? opt.resolution : pipe.default_size();
  co.size_step = static_cast<int>(pipe.vae_scale_factor() << (pipe.unet->config().num_blocks() - 1));
  co.buckets = opt.buckets;
  if (co.resolution % co.size_step != 0)
    throw Error("resolution " + std::to_string(co.resolution) + ": must be a multiple of the model's size step " +
                std::to_string(co.size_step));
  const CaptionedDataset data = load_captioned(opt.data, co);
  const auto latents = encode_buckets(pipe, data, !opt.quiet);

  LoraNetworkOptions nopt = opt.network;
  nopt.text_encoder = train_text;
  torch::nn::Module* text_module = train_text ? pipe.text->model.ptr().get() : nullptr;
  LoraNetwork network(*pipe.unet, text_module, nopt, mix_seed(opt.seed, 0x6c6f7261));
  AdamW unet_opt(network->named_lora_parameters(false), AdamW::Options{0.9, 0.999, 1e-8, opt.weight_decay});
  std::optional<AdamW> text_opt;
  if (train_text)
    text_opt.emplace(network->named_lora_parameters(true), AdamW::Options{0.9, 0.999, 1e-8, opt.weight_decay});
  std::vector<torch::Tensor> params;
  LoraTrainResult result;
  for (const auto& p : network->parameters()) {
    params.push_back(p);
    result.parameters += p.numel();
  }
  for (const auto& t : network->targets()) ++(t.text ? result.text_layers : result.unet_layers);
  result.images = data.size();

  const auto alphas_cumprod = make_alphas_cumprod(pipe.scheduler).to(device);
  const std::string prediction = pipe.scheduler.prediction_type;
  const int T = pipe.scheduler.num_train_timesteps;

  // Text conditioning; the empty caption's embedding (caption dropout) is computed once when the
  // text encoder is frozen.
  auto encode_text = [&](const std::vector<std::string>& captions, bool grad) {
    auto ids = tokenize(*pipe.text, captions).to(device);
    std::optional<torch::NoGradGuard> ng;
    if (!grad) ng.emplace();
    return pipe.text->model->forward(ids).last_hidden_state;
  };
  // Per-sample MSE of a batch at given timesteps and noise (the fixed-noise evaluation).
  auto batch_loss = [&](const torch::Tensor& x0, const torch::Tensor& noise, const torch::Tensor& t,
                        const torch::Tensor& ehs) {
    auto xt = add_noise(alphas_cumprod, x0, noise, t);
    auto target = prediction_target(prediction, alphas_cumprod, x0, noise, t);
    torch::Tensor out;
    {
      nn::AutocastGuard autocast(device, opt.bf16);
      out = pipe.unet->forward(xt, t.to(torch::kFloat32), ehs).to(torch::kFloat32);
    }
    return (out - target).pow(2).mean({1, 2, 3});
  };
  // Fixed-noise loss over every training image at 4 timesteps spread over the schedule.
  auto eval_loss = [&]() -> double {
    if (opt.eval_images <= 0) return NAN;
    torch::NoGradGuard ng;
    network->attach();
    auto gen = at::detail::createCPUGenerator(mix_seed(opt.seed, 0x6576616c));
    double total = 0;
    int64_t count = 0;
    for (size_t b = 0; b < data.buckets.size(); ++b) {
      const auto& bl = latents[b];
      std::vector<std::string> caps;
      for (auto i : data.buckets[b].items) caps.push_back(data.captions[static_cast<size_t>(i)]);
      for (int64_t s = 0; s < bl.mean.size(0) && count < 4 * opt.eval_images; s += 8) {
        const int64_t e = std::min({bl.mean.size(0), s + 8, s + opt.eval_images - count / 4});
        auto ehs = encode_text(std::vector<std::string>(caps.begin() + s, caps.begin() + e), false);
        for (int k = 0; k < 4; ++k) {
          auto x0 = (bl.mean.slice(0, s, e) + bl.std.slice(0, s, e) * torch::randn(bl.mean.slice(0, s, e).sizes(), gen))
                        .to(device);
          auto noise = torch::randn(x0.sizes(), gen).to(device);
          auto t = torch::full({e - s}, static_cast<int64_t>((k + 0.5) * T / 4), torch::kInt64).to(device);
          total += batch_loss(x0, noise, t, ehs).sum().item<double>();
          count += e - s;
        }
      }
    }
    return total / static_cast<double>(count);
  };

  LoopState state;
  double smooth = NAN;
  if (resumed) {
    load_checkpoint(ckpt_dir, *resumed, *network, *network, unet_opt);
    // Both optimizers step together, so the text encoder's has the UNet's step count.
    if (text_opt)
      text_opt->load_state(load_checkpoint_extra(ckpt_dir, "text_optimizer"), unet_opt.steps(),
                           ckpt_dir + "/text_optimizer.safetensors");
    state.step = resumed->step;
    state.trained_seconds = resumed->seconds;
    smooth = resumed->smooth_loss;
    if (state.step > opt.steps)
      throw Error(ckpt_dir + ": already at step " + std::to_string(state.step) + " (raise steps to train further)");
  }
  start_run_files(dir, opts_now, "step,loss,lr,img_per_s,elapsed_s", !resumed);

  if (!opt.quiet) {
    std::fprintf(stderr,
                 "diffuse train-lora: %lld images in %zu buckets | %d UNet + %d text-encoder layers, rank %d, "
                 "%.2fM parameters | %s | %s\n",
                 static_cast<long long>(data.size()), data.buckets.size(), result.unet_layers, result.text_layers,
                 opt.network.rank, static_cast<double>(result.parameters) / 1e6, device.str().c_str(),
                 runtime_summary().c_str());
    if (resumed) std::fprintf(stderr, "resuming at step %lld\n", static_cast<long long>(state.step));
  }
  result.eval_loss_before = NAN;
  if (!resumed) {
    network->detach();
    result.eval_loss_before = eval_loss();
  }

  const std::time_t started = std::time(nullptr);
  auto save_lora = [&] {
    const auto& c = pipe.unet->config();
    const bool v2 = c.cross_attention_dim.at(0) == 1024;
    nlohmann::json args = nlohmann::json::object();
    if (nopt.conv) {
      args["conv_dim"] = std::to_string(nopt.conv_rank > 0 ? nopt.conv_rank : nopt.rank);
      args["conv_alpha"] = std::to_string(nopt.conv_alpha > 0 ? nopt.conv_alpha : nopt.alpha);
    }
    if (nopt.unet_layers == "attention") args["unet_layers"] = "attention";
    std::map<std::string, std::string> meta = {
        {"ss_network_module", "networks.lora"},
        {"ss_network_dim", std::to_string(nopt.rank)},
        {"ss_network_alpha", c10::str(nopt.alpha)},
        {"ss_network_args", args.dump()},
        {"ss_v2", v2 ? "True" : "False"},
        {"ss_base_model_version", v2 ? "sd_v2" : "sd_v1"},
        {"ss_sd_model_name", fs::path(opt.model).filename().string()},
        {"ss_output_name", fs::path(opt.out).stem().string()},
        {"ss_steps", std::to_string(state.step)},
        {"ss_max_train_steps", std::to_string(opt.steps)},
        {"ss_learning_rate", c10::str(opt.lr)},
        {"ss_unet_lr", c10::str(opt.lr)},
        {"ss_text_encoder_lr", c10::str(opt.text_encoder_lr)},
        {"ss_network_train_unet_only", train_text ? "False" : "True"},
        {"ss_lr_scheduler", opt.lr_schedule},
        {"ss_lr_warmup_steps", std::to_string(opt.warmup)},
        {"ss_optimizer", "AdamW(weight_decay=" + c10::str(opt.weight_decay) + ")"},
        {"ss_max_grad_norm", c10::str(opt.grad_clip)},
        {"ss_batch_size_per_device", std::to_string(opt.batch)},
        {"ss_total_batch_size", std::to_string(opt.batch)},
        {"ss_gradient_accumulation_steps", "1"},
        {"ss_num_train_images", std::to_string(data.epoch_size())},
        {"ss_num_reg_images", "0"},
        {"ss_num_batches_per_epoch", std::to_string(CaptionedLoader(data, opt.batch, opt.seed).batches_per_epoch())},
        {"ss_resolution", "(" + std::to_string(co.resolution) + ", " + std::to_string(co.resolution) + ")"},
        {"ss_enable_bucket", opt.buckets ? "True" : "False"},
        {"ss_bucket_no_upscale", "False"},
        {"ss_caption_dropout_rate", c10::str(opt.caption_dropout)},
        {"ss_min_snr_gamma", c10::str(opt.min_snr_gamma)},
        {"ss_mixed_precision", opt.bf16 ? "bf16" : "no"},
        {"ss_save_precision", opt.save_dtype},
        {"ss_prediction_type", prediction},
        {"ss_gradient_checkpointing", "False"},
        {"ss_seed", std::to_string(opt.seed)},
        {"ss_training_started_at", iso_time(started)},
        {"ss_training_finished_at", iso_time(std::time(nullptr))},
    };
    // kohya's per-folder summaries: repeats and image counts, and how often each comma-separated tag
    // of the captions occurs (what A1111 shows for a LoRA).
    nlohmann::json dirs = nlohmann::json::object(), tags = nlohmann::json::object();
    for (int64_t i = 0; i < data.size(); ++i) {
      const auto k = static_cast<size_t>(i);
      const std::string folder = data.source == "emoji-captions"
                                     ? "emoji-captions"
                                     : fs::path(data.files[k]).parent_path().filename().string();
      auto& d = dirs[folder];
      d["n_repeats"] = data.repeats[k];
      d["img_count"] = d.value("img_count", 0) + 1;
      std::stringstream caption(data.captions[k]);
      for (std::string tag; std::getline(caption, tag, ',');) {
        const auto b = tag.find_first_not_of(' '), e = tag.find_last_not_of(' ');
        if (b == std::string::npos) continue;
        auto& n = tags[folder][tag.substr(b, e - b + 1)];
        n = n.is_null() ? 1 : n.get<int>() + 1;
      }
    }
    meta["ss_dataset_dirs"] = dirs.dump();
    meta["ss_tag_frequency"] = tags.dump();
    nlohmann::json buckets = nlohmann::json::object();
    for (size_t b = 0; b < data.buckets.size(); ++b)
      buckets[std::to_string(b)] = {{"resolution", {data.buckets[b].width, data.buckets[b].height}},
                                    {"count", data.buckets[b].items.size()}};
    meta["ss_bucket_info"] = nlohmann::json{{"buckets", buckets}}.dump();
    safetensors::save(opt.out, network->kohya_state_dict(save_dtype(opt.save_dtype)), meta);
  };
  auto save_all = [&] {
    CheckpointExtras extras;
    if (text_opt) extras["text_optimizer"] = text_opt->state();
    // LoRA training keeps no EMA: the network is saved as both.
    save_checkpoint(ckpt_dir, CheckpointState{state.step, smooth, state.trained_seconds, opts_now}, *network, *network,
                    unet_opt, extras);
    save_lora();
  };

  const DiffusionObjective objective(alphas_cumprod, {prediction, 0.0, -1, false, opt.min_snr_gamma});
  CaptionedLoader loader(data, opt.batch, opt.seed);
  NonFiniteGuard nonfinite(opt.max_nonfinite_steps);
  double lr = 0;
  LoopCallbacks cb;
  cb.step = [&](int64_t step) {
    lr = scheduled_lr(opt.lr, step, opt.warmup, opt.lr_schedule, opt.steps);
    const double text_lr = scheduled_lr(opt.text_encoder_lr, step, opt.warmup, opt.lr_schedule, opt.steps);
    unet_opt.zero_grad();
    if (text_opt) text_opt->zero_grad();
    CaptionedBatch b = loader.make(step);
    auto gen = at::detail::createCPUGenerator(mix_seed(opt.seed, static_cast<uint64_t>(step)));
    const auto& bl = latents[static_cast<size_t>(b.bucket)];
    auto rows = torch::tensor(b.rows, torch::kInt64);
    auto mean = bl.mean.index_select(0, rows), sd = bl.std.index_select(0, rows);
    auto x0 = (mean + sd * torch::randn(mean.sizes(), gen)).to(device);
    const int64_t B = x0.size(0);
    const DiffusionDraw draw = objective.draw(x0, {}, gen);
    auto captions = b.captions;
    if (opt.caption_dropout > 0) {
      auto drop = torch::rand({B}, gen);
      for (int64_t i = 0; i < B; ++i)
        if (drop[i].item<double>() < opt.caption_dropout) captions[static_cast<size_t>(i)].clear();
    }
    network->attach();
    auto ehs = encode_text(captions, train_text);
    torch::Tensor out;
    {
      nn::AutocastGuard autocast(device, opt.bf16);
      out = pipe.unet->forward(draw.xt, draw.t.to(torch::kFloat32), ehs).to(torch::kFloat32);
    }
    auto loss = objective.loss(out, draw);
    loss.backward();
    const double step_loss = loss.item<double>();
    if (nonfinite.ok(step_loss, params, step)) {
      if (opt.grad_clip > 0) clip_grad_norm(params, opt.grad_clip);
      unet_opt.step(lr);
      if (text_opt) text_opt->step(text_lr);
      smooth = std::isnan(smooth) ? step_loss : 0.98 * smooth + 0.02 * step_loss;
    }
  };
  cb.progress_text = [&] {
    char text[96];
    std::snprintf(text, sizeof text, "loss %.4f lr %.2e", smooth, lr);
    return std::string(text);
  };
  cb.metrics_row = [&](int64_t step, double ips, double seconds, double) {
    char row[128];
    std::snprintf(row, sizeof row, "%lld,%.6g,%.6g,%.1f,%.1f\n", static_cast<long long>(step), smooth, lr, ips,
                  seconds);
    return std::string(row);
  };
  cb.save = save_all;
  cb.plots = [&] { plot_loss(dir); };
  cb.finish_text = [&] { return "loss " + std::to_string(smooth); };
  std::vector<std::string> prompts = opt.sample_prompts;
  for (const auto& c : data.captions)
    if (prompts.empty() || (opt.sample_prompts.empty() && prompts.size() < 4 &&
                            std::find(prompts.begin(), prompts.end(), c) == prompts.end()))
      prompts.push_back(c);
  cb.sample = [&](int64_t step) {
    torch::NoGradGuard ng;
    network->attach();
    std::vector<torch::Tensor> rows;
    for (const auto& prompt : prompts) {
      SDOptions g;
      g.prompt = prompt;
      g.n = g.batch_size = 4;
      g.steps = 20;
      g.guidance = 7.5;
      g.seed = 1000;
      g.width = g.height = co.resolution;
      rows.push_back(generate(pipe, g).samples);
    }
    std::string text = "LoRA training samples at step " + std::to_string(step) + ", rows:";
    for (const auto& p : prompts) text += "\n" + p;
    char name[64];
    std::snprintf(name, sizeof name, "/samples/step_%07lld.png", static_cast<long long>(step));
    const auto grid = to_image(make_grid(torch::cat(rows).clamp(-1, 1), 4));
    for (const std::string& path : {dir + name, dir + "/samples/latest.png"})
      write_png(path, grid, {{"parameters", text}});
  };
  LoopOptions lo;
  lo.label = "train-lora";
  lo.out = dir;
  lo.steps = opt.steps;
  lo.save_every = opt.save_every;
  lo.log_every = 10;
  lo.sample_every = opt.sample_every;
  lo.images_per_step = opt.batch;
  lo.quiet = opt.quiet;
  const LoopResult loop = run_training_loop(lo, state, cb);
  result.interrupted = loop.interrupted;
  result.eval_loss_after = eval_loss();
  network->detach();
  result.steps = state.step;
  result.final_loss = smooth;
  result.seconds = loop.seconds;
  return result;
}

}  // namespace diffuse
