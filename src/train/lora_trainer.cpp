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
#include "models/autoencoder_kl.h"
#include "nn/autocast.h"
#include "nn/state_dict.h"
#include "pipelines/scheduler_config.h"
#include "pipelines/sd_pipeline.h"
#include "train/adamw.h"
#include "train/captioned.h"
#include "train/checkpoint.h"
#include "train/diffusion_objective.h"
#include "train/loader.h"
#include "train/run_helpers.h"
#include "train/text_to_image.h"
#include "train/train_loop.h"

namespace fs = std::filesystem;

namespace diffuse {

std::string lora_train_dir(const std::string& out) {
  std::string stem = out;
  if (ends_with(stem, ".safetensors")) stem.resize(stem.size() - 12);
  return stem + "-train";
}

std::string lora_run_dir(const LoraTrainOptions& opt) { return opt.full ? opt.out : lora_train_dir(opt.out); }

namespace {

void validate_lora_options(const LoraTrainOptions& o) {
  if (o.model.empty()) throw Error("model is required");
  if (o.data.empty()) throw Error("data is required");
  if (o.full && (o.out.empty() || ends_with(o.out, ".safetensors")))
    throw Error("out " + o.out + ": full fine-tuning writes a pipeline folder, not a .safetensors file");
  if (!o.full && (o.out.empty() || !ends_with(o.out, ".safetensors")))
    throw Error("out " + o.out + ": expected a .safetensors file");
  if (o.full && o.text_encoder_lr > 0) throw Error("text_encoder_lr: full fine-tuning trains the UNet only");
  if (!o.full && o.ema_decay != 0) throw Error("ema_decay: only for full fine-tuning");
  if (o.ema_decay < 0 || o.ema_decay >= 1) throw Error("ema_decay: must be in [0, 1)");
  if (!(o.prior_weight >= 0) || !std::isfinite(o.prior_weight))
    throw Error("prior_weight " + c10::str(o.prior_weight) + ": must be a number >= 0");
  if (o.prior_data.empty() && !o.prior_prompt.empty())
    throw Error("prior_prompt: needs prior_data (the folder of class images it captions)");
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
          {"processes", o.dist ? o.dist->world_size() : 1},
          {"global_batch", o.batch * (o.dist ? o.dist->world_size() : 1)},
          {"min_snr_gamma", o.min_snr_gamma},
          {"caption_dropout", o.caption_dropout},
          {"bf16", o.bf16},
          {"gradient_checkpointing", o.gradient_checkpointing},
          {"prior_data", o.prior_data},
          {"prior_prompt", o.prior_prompt},
          {"prior_weight", o.prior_weight},
          {"full", o.full},
          {"ema_decay", o.ema_decay},
          {"seed", o.seed}};
}

// Options that change what a checkpoint means: a resumed run keeps them.
const std::vector<std::string> kLoraResumeKeys = {
    "model",           "data",         "caption_ext", "resolution", "buckets",    "rank",
    "alpha",           "unet_layers",  "conv",        "conv_rank",  "conv_alpha", "text_encoder_lr",
    "caption_dropout", "global_batch", "bf16",        "seed",       "prior_data", "prior_prompt",
    "prior_weight",    "full",         "ema_decay"};

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
  std::vector<PlotSeries> series = {{"loss", cols["step"], cols["loss"]}};
  if (!cols["loss_prior"].empty()) {
    series.push_back({"instance", cols["step"], cols["loss_instance"]});
    series.push_back({"prior", cols["step"], cols["loss_prior"]});
  }
  save_plot(dir + "/loss.png", series, po);
}

std::string iso_time(std::time_t t) {
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// Class images for prior preservation, bucketed like the instance data.
CaptionedDataset load_prior(const LoraTrainOptions& o, CaptionedOptions co) {
  if (o.prior_data != "emoji-captions" && !fs::is_directory(o.prior_data))
    throw Error("prior_data " + o.prior_data + ": not a folder");
  co.caption = o.prior_prompt;
  try {
    return load_captioned(o.prior_data, co);
  } catch (const Error& e) {
    const std::string m = e.what();
    throw Error("prior_data " + m +
                (o.prior_prompt.empty() && m.find("no caption") != std::string::npos
                     ? " (or give prior_prompt, the caption of every class image)"
                     : ""));
  }
}

// Full fine-tuning's output: a StableDiffusionPipeline folder with the trained UNet and the base's
// other components (copied from a base folder, written from a single file's tensors), swapped in
// one component at a time with model_index.json last.
void save_full_pipeline(const SDPipeline& pipe, UNet2DConditionModel& unet, const std::string& model,
                        const std::string& out) {
  const std::string tmp = out + "/.pipeline.tmp";
  remove_tree(tmp);
  save_unet2d_condition(unet, tmp + "/unet");
  const bool folder = fs::is_directory(model);
  nlohmann::json index;
  if (folder) {
    for (const char* c : {"text_encoder", "tokenizer", "vae", "scheduler"})
      fs::copy(model + "/" + c, tmp + "/" + c, fs::copy_options::recursive);
    std::ifstream f(model + "/model_index.json");
    index = nlohmann::json::parse(f);
  } else {
    fs::create_directories(tmp + "/text_encoder");
    write_file_atomically(tmp + "/text_encoder/config.json", pipe.text->model->config().to_json().dump(2) + "\n");
    safetensors::save(tmp + "/text_encoder/model.safetensors", nn::state_dict(*pipe.text->model), {{"format", "pt"}});
    write_clip_tokenizer_folder(tmp + "/tokenizer");
    save_autoencoder_kl(pipe.vae, tmp + "/vae");
    fs::create_directories(tmp + "/scheduler");
    auto sj = scheduler_config_json(pipe.scheduler, pipe.scheduler_class);
    if (pipe.scheduler_class == "DDIMScheduler") {
      sj["set_alpha_to_one"] = false;
      sj["steps_offset"] = 1;
    }
    write_file_atomically(tmp + "/scheduler/scheduler_config.json", sj.dump(2) + "\n");
    index = {{"_class_name", "StableDiffusionPipeline"},
             {"_diffusers_version", "0.28.2"},
             {"feature_extractor", {nullptr, nullptr}},
             {"image_encoder", {nullptr, nullptr}},
             {"requires_safety_checker", false},
             {"safety_checker", {nullptr, nullptr}},
             {"scheduler", {"diffusers", pipe.scheduler_class}},
             {"text_encoder", {"transformers", "CLIPTextModel"}},
             {"tokenizer", {"transformers", "CLIPTokenizer"}},
             {"unet", {"diffusers", "UNet2DConditionModel"}},
             {"vae", {"diffusers", "AutoencoderKL"}}};
  }
  for (const char* c : {"unet", "text_encoder", "tokenizer", "vae", "scheduler"}) {
    remove_tree(out + "/" + c);
    fs::rename(tmp + "/" + c, out + "/" + c);
  }
  remove_tree(tmp);
  write_file_atomically(out + "/model_index.json", index.dump(2) + "\n");
}

}  // namespace

LoraTrainResult train_lora(const LoraTrainOptions& opt) {
  validate_lora_options(opt);
  const torch::Device device = parse_device(opt.device);
  const std::string dir = lora_run_dir(opt), ckpt_dir = dir + "/checkpoint";
  const nlohmann::json opts_now = lora_options_json(opt);
  Distributed* dist = opt.dist && opt.dist->world_size() > 1 ? opt.dist.get() : nullptr;
  const int rank = dist ? dist->rank() : 0, world = dist ? dist->world_size() : 1;
  const bool is_main = rank == 0, quiet = opt.quiet || !is_main;
  const std::optional<CheckpointState> resumed = open_run(dir, opts_now, kLoraResumeKeys, opt.resume, opt.quiet, dist);

  SDPipeline pipe = load_base(opt, device);
  const bool train_text = opt.text_encoder_lr > 0;
  // Frozen base weights: float32, or bf16 (kept 16-bit) with bf16 autocast. Trained UNet weights
  // (full) are float32, under bf16 autocast with bf16.
  // A LoRA on a base stored in 16 bits, without --bf16 but with gradient checkpointing, keeps the
  // base 16-bit and computes in fp32 one layer at a time (the checkpoints' backward passes upcast
  // one block at a time); without checkpointing the backward pass would need every layer's fp32
  // copy at once, so the base is upcast once instead.
  const torch::Dtype stored = pipe.unet->conv_in->weight.scalar_type();
  const bool keep16 =
      !opt.bf16 && !opt.full && opt.gradient_checkpointing && (stored == torch::kFloat16 || stored == torch::kBFloat16);
  const torch::Dtype base_dtype = opt.bf16 && !opt.full ? torch::kBFloat16 : torch::kFloat32;
  std::optional<torch::Dtype> compute;
  if (keep16) {
    compute = torch::kFloat32;
    pipe.unet->to(stored);
  } else {
    pipe.unet->to(base_dtype);
  }
  pipe.unet->set_compute_dtype(compute);
  pipe.unet->set_gradient_checkpointing(opt.gradient_checkpointing);
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
  const bool prior = !opt.prior_data.empty();
  const CaptionedDataset prior_set = prior ? load_prior(opt, co) : CaptionedDataset{};
  const auto latents = encode_buckets(pipe, data, !quiet);
  const auto prior_latents = prior ? encode_buckets(pipe, prior_set, !quiet) : std::vector<BucketLatents>{};

  // The trained tensors: LoRA adapters, or (full) every UNet parameter with an optional EMA copy.
  LoraNetworkOptions nopt = opt.network;
  nopt.text_encoder = train_text;
  torch::nn::Module* text_module = train_text ? pipe.text->model.ptr().get() : nullptr;
  LoraNetwork network{nullptr};
  UNet2DConditionModel ema{nullptr};
  std::vector<std::pair<std::string, torch::Tensor>> unet_params;
  if (opt.full) {
    for (const auto& p : pipe.unet->named_parameters()) {
      p.value().set_requires_grad(true);
      unet_params.emplace_back(p.key(), p.value());
    }
    pipe.unet->train();  // SD's UNet has no dropout (dropout 0): train and eval compute the same
    if (opt.ema_decay > 0) {
      ema = UNet2DConditionModel(pipe.unet->config());
      ema->to(device);
      torch::NoGradGuard ng;
      for (const auto& [name, t] : unet_params) ema->named_parameters()[name].copy_(t);
      for (auto& p : ema->parameters()) p.set_requires_grad(false);
      ema->eval();
    }
  } else {
    network = LoraNetwork(*pipe.unet, text_module, nopt, mix_seed(opt.seed, 0x6c6f7261));
    unet_params = network->named_lora_parameters(false);
  }
  torch::nn::Module& trained = opt.full ? static_cast<torch::nn::Module&>(*pipe.unet) : *network;
  torch::nn::Module& saved_ema = ema ? static_cast<torch::nn::Module&>(*ema) : trained;
  AdamW unet_opt(unet_params, AdamW::Options{0.9, 0.999, 1e-8, opt.weight_decay});
  std::optional<AdamW> text_opt;
  if (train_text)
    text_opt.emplace(network->named_lora_parameters(true), AdamW::Options{0.9, 0.999, 1e-8, opt.weight_decay});
  std::vector<torch::Tensor> params;
  LoraTrainResult result;
  for (const auto& p : trained.parameters()) {
    params.push_back(p);
    result.parameters += p.numel();
  }
  if (network)
    for (const auto& t : network->targets()) ++(t.text ? result.text_layers : result.unet_layers);
  result.images = data.size();
  result.prior_images = prior_set.size();
  result.base_weights = keep16 ? std::string(stored == torch::kFloat16 ? "fp16" : "bf16") + " computed in fp32"
                        : base_dtype == torch::kBFloat16 ? "bf16"
                                                         : "fp32";
  auto attach = [&] {
    if (network) network->attach(1.0, compute);
  };
  auto detach = [&] {
    if (network) network->detach();
  };

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
    attach();
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
  double smooth = NAN, smooth_instance = NAN, smooth_prior = NAN;
  if (resumed) {
    load_checkpoint(ckpt_dir, *resumed, trained, saved_ema, unet_opt);
    if (prior) {
      const auto parts = load_checkpoint_extra(ckpt_dir, "prior_loss");
      smooth_instance = parts.at("instance").item<double>();
      smooth_prior = parts.at("prior").item<double>();
    }
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
  // Identical trained weights on every rank: rank 0's (a fresh run's initialisation, or its checkpoint).
  if (dist) {
    std::vector<torch::Tensor> state_tensors = trained.parameters();
    if (ema)
      for (auto& p : ema->parameters()) state_tensors.push_back(p);
    dist->broadcast(state_tensors, "the initial weights");
  }
  if (is_main)
    start_run_files(dir, opts_now,
                    std::string("step,loss,lr,img_per_s,elapsed_s") + (prior ? ",loss_instance,loss_prior" : ""),
                    !resumed);

  if (!quiet) {
    std::fprintf(stderr,
                 "diffuse train-lora: %lld images in %zu buckets%s | %s, %.2fM parameters%s | base weights %s | %s | "
                 "%s\n",
                 static_cast<long long>(data.size()), data.buckets.size(),
                 prior ? (" + " + std::to_string(prior_set.size()) + " prior images").c_str() : "",
                 opt.full ? "full UNet"
                          : (std::to_string(result.unet_layers) + " UNet + " + std::to_string(result.text_layers) +
                             " text-encoder layers, rank " + std::to_string(opt.network.rank))
                                .c_str(),
                 static_cast<double>(result.parameters) / 1e6,
                 opt.gradient_checkpointing ? ", gradient checkpointing" : "", result.base_weights.c_str(),
                 device.str().c_str(), runtime_summary().c_str());
    print_run_layout(opt.batch, dist, 0, resumed.has_value(), state.step);
  }
  result.eval_loss_before = NAN;
  if (!resumed) {
    detach();
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
        {"ss_total_batch_size", std::to_string(opt.batch * world)},
        {"ss_gradient_accumulation_steps", "1"},
        {"ss_num_train_images", std::to_string(data.epoch_size())},
        {"ss_num_reg_images", std::to_string(prior_set.epoch_size())},
        {"ss_prior_loss_weight", c10::str(prior ? opt.prior_weight : 1.0)},
        {"ss_num_batches_per_epoch",
         std::to_string(CaptionedLoader(data, opt.batch * world, opt.seed).batches_per_epoch())},
        {"ss_resolution", "(" + std::to_string(co.resolution) + ", " + std::to_string(co.resolution) + ")"},
        {"ss_enable_bucket", opt.buckets ? "True" : "False"},
        {"ss_bucket_no_upscale", "False"},
        {"ss_caption_dropout_rate", c10::str(opt.caption_dropout)},
        {"ss_min_snr_gamma", c10::str(opt.min_snr_gamma)},
        {"ss_mixed_precision", opt.bf16 ? "bf16" : "no"},
        {"ss_save_precision", opt.save_dtype},
        {"ss_prediction_type", prediction},
        {"ss_gradient_checkpointing", opt.gradient_checkpointing ? "True" : "False"},
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
    if (prior)
      extras["prior_loss"] = {{"instance", torch::tensor(smooth_instance, torch::kFloat64)},
                              {"prior", torch::tensor(smooth_prior, torch::kFloat64)}};
    // LoRA training keeps no EMA: the network is saved as both (full: without EMA, the UNet).
    save_checkpoint(ckpt_dir, CheckpointState{state.step, smooth, state.trained_seconds, opts_now}, trained, saved_ema,
                    unet_opt, extras);
    if (opt.full)
      save_full_pipeline(pipe, ema ? ema : pipe.unet, opt.model, opt.out);
    else
      save_lora();
  };

  const DiffusionObjective objective(alphas_cumprod, {prediction, 0.0, -1, false, opt.min_snr_gamma});
  // Data parallel: every rank makes the global batches of the step (batch x processes) and their
  // random draws, and trains its share of the rows, weighted by the share's size (see
  // text_to_image.cpp); the gradients are averaged before clipping and the update.
  CaptionedLoader loader(data, opt.batch * world, opt.seed);
  const uint64_t prior_seed = mix_seed(opt.seed, 0x7072696f72);
  std::optional<CaptionedLoader> prior_loader;
  if (prior) prior_loader.emplace(prior_set, opt.batch * world, prior_seed);
  GradientSync sync(opt.dist, params);
  NonFiniteGuard nonfinite(opt.max_nonfinite_steps);
  const std::vector<torch::Tensor> ema_params = ema ? ema->parameters() : std::vector<torch::Tensor>{};
  double lr = 0;
  LoopCallbacks cb;
  cb.step = [&](int64_t step) {
    lr = scheduled_lr(opt.lr, step, opt.warmup, opt.lr_schedule, opt.steps);
    const double text_lr = scheduled_lr(opt.text_encoder_lr, step, opt.warmup, opt.lr_schedule, opt.steps);
    unet_opt.zero_grad();
    if (text_opt) text_opt->zero_grad();
    // The loss of this rank's share of one global batch of `set` (its latents `lat`), with the
    // generator of the step, scaled by the share's size when data parallel (undefined: no rows).
    auto batch_loss_of = [&](const CaptionedBatch& b, const std::vector<BucketLatents>& lat, at::Generator& gen,
                             bool dropout) -> torch::Tensor {
      const auto& bl = lat[static_cast<size_t>(b.bucket)];
      auto rows = torch::tensor(b.rows, torch::kInt64);
      auto mean = bl.mean.index_select(0, rows), sd = bl.std.index_select(0, rows);
      const int64_t B = mean.size(0), first = B * rank / world, last = B * (rank + 1) / world;
      auto x0 = (mean + sd * torch::randn(mean.sizes(), gen)).slice(0, first, last).to(device);
      const DiffusionDraw draw = objective.draw(x0, {}, gen, BatchSlice{first, B});
      std::vector<std::string> captions(b.captions.begin() + first, b.captions.begin() + last);
      if (dropout && opt.caption_dropout > 0) {
        auto drop = torch::rand({B}, gen);
        for (int64_t i = first; i < last; ++i)
          if (drop[i].item<double>() < opt.caption_dropout) captions[static_cast<size_t>(i - first)].clear();
      }
      if (last == first) return {};
      attach();  // the merged weights of the graph (each backward frees them)
      auto ehs = encode_text(captions, train_text && torch::GradMode::is_enabled());
      torch::Tensor out;
      {
        nn::AutocastGuard autocast(device, opt.bf16);
        out = pipe.unet->forward(draw.xt, draw.t.to(torch::kFloat32), ehs).to(torch::kFloat32);
      }
      auto loss = objective.loss(out, draw);
      return dist ? loss * (static_cast<double>((last - first) * world) / static_cast<double>(B)) : loss;
    };
    auto gen = at::detail::createCPUGenerator(mix_seed(opt.seed, static_cast<uint64_t>(step)));
    double instance_loss = 0, prior_loss = NAN;
    if (auto loss = batch_loss_of(loader.make(step), latents, gen, true); loss.defined()) {
      loss.backward();
      instance_loss = loss.item<double>();
    }
    if (prior) {
      // The class images' batch, drawn from generators of its own (so that prior_weight 0 trains
      // exactly what no prior data does), and its own backward pass: gradients add up to those of
      // loss_instance + prior_weight * loss_prior with one batch's activations held at a time.
      auto pgen = at::detail::createCPUGenerator(mix_seed(prior_seed, static_cast<uint64_t>(step)));
      std::optional<torch::NoGradGuard> ng;
      if (opt.prior_weight == 0) ng.emplace();
      prior_loss = 0;
      if (auto ploss = batch_loss_of(prior_loader->make(step), prior_latents, pgen, false); ploss.defined()) {
        if (opt.prior_weight > 0) (ploss * opt.prior_weight).backward();
        prior_loss = ploss.item<double>();
      }
    }
    if (dist) {
      sync.finish("gradients at step " + std::to_string(step + 1));
      auto l = torch::tensor({instance_loss, prior ? prior_loss : 0.0}, torch::kFloat64);
      dist->all_reduce_mean({l}, "the loss at step " + std::to_string(step + 1));
      instance_loss = l[0].item<double>();
      if (prior) prior_loss = l[1].item<double>();
    }
    const double step_loss = prior ? instance_loss + opt.prior_weight * prior_loss : instance_loss;
    if (nonfinite.ok(step_loss, params, step)) {
      if (opt.grad_clip > 0) clip_grad_norm(params, opt.grad_clip);
      unet_opt.step(lr);
      if (text_opt) text_opt->step(text_lr);
      if (ema) update_ema(ema_params, params, opt.ema_decay, step);
      smooth = std::isnan(smooth) ? step_loss : 0.98 * smooth + 0.02 * step_loss;
      if (prior) {
        smooth_instance = std::isnan(smooth_instance) ? instance_loss : 0.98 * smooth_instance + 0.02 * instance_loss;
        smooth_prior = std::isnan(smooth_prior) ? prior_loss : 0.98 * smooth_prior + 0.02 * prior_loss;
      }
    }
  };
  LossReport report;
  report.loss = &smooth;
  report.lr = &lr;
  report.loss_digits = 9;
  if (prior) {
    report.progress_detail = [&] {
      char text[96];
      std::snprintf(text, sizeof text, " (instance %.4f prior %.4f)", smooth_instance, smooth_prior);
      return std::string(text);
    };
    report.extra_columns = [&](double) {
      char row[96];
      std::snprintf(row, sizeof row, ",%.9g,%.9g", smooth_instance, smooth_prior);
      return std::string(row);
    };
  }
  set_loss_callbacks(cb, report);
  cb.save = save_all;
  cb.plots = [&] { plot_loss(dir); };
  std::vector<std::string> prompts = opt.sample_prompts;
  for (const auto& c : data.captions)
    if (prompts.empty() || (opt.sample_prompts.empty() && prompts.size() < 4 &&
                            std::find(prompts.begin(), prompts.end(), c) == prompts.end()))
      prompts.push_back(c);
  cb.sample = [&](int64_t step) {
    torch::NoGradGuard ng;
    attach();
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
    std::string text = std::string(opt.full ? "Fine-tuning" : "LoRA training") + " samples at step " +
                       std::to_string(step) + ", rows:";
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
  lo.images_per_step = static_cast<int64_t>(opt.batch) * world;
  lo.quiet = opt.quiet;
  lo.dist = dist;
  const LoopResult loop = run_training_loop(lo, state, cb);
  result.interrupted = loop.interrupted;
  result.eval_loss_after = eval_loss();
  detach();
  result.steps = state.step;
  result.final_loss = smooth;
  result.final_loss_instance = smooth_instance;
  result.final_loss_prior = smooth_prior;
  result.seconds = loop.seconds;
  return result;
}

}  // namespace diffuse
