#include "train/vae_trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/image.h"
#include "core/plot.h"
#include "core/progress.h"
#include "core/runtime.h"
#include "models/model_io.h"
#include "nn/state_dict.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/distributed.h"
#include "train/loader.h"
#include "train/patch_discriminator.h"
#include "train/run_helpers.h"
#include "train/train_loop.h"

namespace fs = std::filesystem;

namespace diffuse {

// ---------------------------------------------------------------------------------------------
// Presets and measurements

const std::vector<std::pair<std::string, std::string>>& vae_presets() {
  static const std::vector<std::pair<std::string, std::string>> p = {
      {"tiny", "f=4, (32, 64, 64), 1 layer per block, 4 latent channels (~0.95M parameters)"},
      {"small", "f=4, (64, 128, 128), 2 layers per block, 4 latent channels (~5.1M)"},
      {"sd", "f=8, Stable Diffusion's VAE layout (128, 256, 512, 512), 2 layers per block (~84M)"},
  };
  return p;
}

nlohmann::json vae_preset(const std::string& name, int channels, int image_size) {
  nlohmann::json j = {{"_class_name", "AutoencoderKL"}, {"act_fn", "silu"},      {"in_channels", channels},
                      {"out_channels", channels},       {"latent_channels", 4},  {"norm_num_groups", 32},
                      {"sample_size", image_size},      {"scaling_factor", 1.0}, {"force_upcast", true}};
  std::vector<int> widths;
  if (name == "tiny") {
    widths = {32, 64, 64};
    j["layers_per_block"] = 1;
  } else if (name == "small") {
    widths = {64, 128, 128};
    j["layers_per_block"] = 2;
  } else if (name == "sd") {
    widths = {128, 256, 512, 512};
    j["layers_per_block"] = 2;
  } else {
    std::string names;
    for (const auto& [n, d] : vae_presets()) names += (names.empty() ? "" : ", ") + n;
    throw Error("--config " + name + ": not a VAE preset (" + names + ") or a config.json file");
  }
  j["block_out_channels"] = widths;
  j["down_block_types"] = std::vector<std::string>(widths.size(), "DownEncoderBlock2D");
  j["up_block_types"] = std::vector<std::string>(widths.size(), "UpDecoderBlock2D");
  return j;
}

torch::Tensor psnr_per_image(const torch::Tensor& recon, const torch::Tensor& ref) {
  // [-1, 1] -> [0, 1]: the squared error shrinks by 4.
  auto mse = (recon.to(torch::kFloat64) - ref.to(torch::kFloat64)).pow(2).mean({1, 2, 3}) / 4.0;
  return -10.0 * torch::log10(mse.clamp_min(1e-12));
}

double latent_scaling_factor(AutoencoderKL& vae, const Dataset& data, int batches, int batch_size, uint64_t seed) {
  torch::NoGradGuard ng;
  const int64_t n = std::min<int64_t>(data.size(), static_cast<int64_t>(batches) * batch_size);
  if (n < 1) throw Error("scaling factor: no images");
  auto gen = at::detail::createCPUGenerator(mix_seed(seed, 0x5ca1e));
  auto order = torch::randperm(data.size(), gen, torch::kInt64).narrow(0, 0, n);
  std::vector<torch::Tensor> latents;
  for (int64_t i = 0; i < n; i += batch_size) {
    auto idx = order.narrow(0, i, std::min<int64_t>(batch_size, n - i));
    auto x = data.images.index_select(0, idx).to(torch::kFloat32).div(127.5).sub(1.0).to(vae->device());
    auto post = vae->encode(x);
    auto noise = torch::randn(post.mean.sizes(), gen).to(post.mean.device());
    latents.push_back((post.mean + post.std() * noise).to(torch::kCPU, torch::kFloat64).flatten());
  }
  double sd = torch::cat(latents).std(/*unbiased=*/false).item<double>();
  if (!(sd > 0) || !std::isfinite(sd))
    throw Error("scaling factor: latents have standard deviation " + std::to_string(sd));
  return 1.0 / sd;
}

double reconstruction_psnr(AutoencoderKL& vae, const torch::Tensor& images_u8, int batch_size) {
  torch::NoGradGuard ng;
  const int64_t n = images_u8.size(0);
  if (n < 1) throw Error("reconstruction PSNR: no images");
  double sum = 0;
  for (int64_t i = 0; i < n; i += batch_size) {
    auto x = images_u8.narrow(0, i, std::min<int64_t>(batch_size, n - i)).to(torch::kFloat32).div(127.5).sub(1.0);
    auto rec = vae->forward(x.to(vae->device())).clamp(-1, 1).to(torch::kCPU);
    sum += psnr_per_image(rec, x).sum().item<double>();
  }
  return sum / static_cast<double>(n);
}

// ---------------------------------------------------------------------------------------------
// Training

namespace {

void validate(const VaeTrainOptions& o) {
  if (o.data.empty()) throw Error("--data is required");
  if (o.out.empty()) throw Error("--out is required");
  if (o.steps < 1) throw Error("--steps " + std::to_string(o.steps) + ": must be at least 1");
  if (o.batch < 1) throw Error("--batch " + std::to_string(o.batch) + ": must be at least 1");
  if (!(o.lr > 0)) throw Error("--lr must be positive");
  if (o.lr_schedule != "constant" && o.lr_schedule != "cosine")
    throw Error("--lr-schedule " + o.lr_schedule + ": expected constant or cosine");
  if (o.ema_decay < 0 || o.ema_decay >= 1) throw Error("--ema must be in [0, 1)");
  if (o.recon_loss != "l1" && o.recon_loss != "l2") throw Error("--recon-loss " + o.recon_loss + ": expected l1 or l2");
  if (o.kl_weight < 0) throw Error("--kl-weight must be >= 0");
  if (o.disc_weight < 0) throw Error("--disc-weight must be >= 0");
  if (o.disc_start < 0) throw Error("--disc-start must be >= 0");
  if (o.disc_channels < 1) throw Error("--disc-channels must be at least 1");
  if (o.save_every < 0 || o.sample_every < 0) throw Error("--save-every and --sample-every must be >= 0");
  if (o.scale_batches < 1) throw Error("--scale-batches must be at least 1");
  if (o.eval_images < 1) throw Error("--eval-images must be at least 1");
  if (!(o.perceptual_weight >= 0)) throw Error("--perceptual-weight must be >= 0");
  if (o.perceptual_weight > 0 && !o.perceptual)
    throw Error("--perceptual-weight " + std::to_string(o.perceptual_weight) +
                " needs a feature network (--perceptual)");
  if (o.freeze_encoder && o.init.empty())
    throw Error("--freeze-encoder needs --init (a trained AutoencoderKL folder whose encoder is kept)");
  if (!o.init.empty() && !fs::is_directory(o.init)) throw Error("--init " + o.init + ": folder not found");
}

nlohmann::json options_json(const VaeTrainOptions& o) {
  return {{"data", o.data},
          {"config", o.config},
          {"image_size", o.image_size},
          {"channels", o.channels},
          {"steps", o.steps},
          {"batch", o.batch},
          {"processes", o.dist ? o.dist->world_size() : 1},
          {"global_batch", o.batch * (o.dist ? o.dist->world_size() : 1)},
          {"lr", o.lr},
          {"lr_schedule", o.lr_schedule},
          {"warmup", o.warmup},
          {"weight_decay", o.weight_decay},
          {"grad_clip", o.grad_clip},
          {"ema_decay", o.ema_decay},
          {"recon_loss", o.recon_loss},
          {"kl_weight", o.kl_weight},
          {"disc_weight", o.disc_weight},
          {"disc_start", o.disc_start},
          {"disc_adaptive", o.disc_adaptive},
          {"disc_channels", o.disc_channels},
          {"disc_lr", o.disc_lr},
          {"flip", o.flip},
          {"seed", o.seed},
          {"scale_batches", o.scale_batches},
          {"perceptual", o.perceptual_weight > 0 ? o.perceptual_source : ""},
          {"perceptual_weight", o.perceptual_weight},
          {"init", o.init},
          {"freeze_encoder", o.freeze_encoder}};
}

bool is_idx_dataset(const std::string& spec) {
  if (spec == "fashion-mnist" || spec == "mnist") return true;
  if (!fs::is_directory(spec)) return false;
  for (const auto& e : fs::directory_iterator(spec))
    if (e.path().filename().string().find("-ubyte") != std::string::npos) return true;
  return false;
}

// Training and held-out images: the dataset's own test split (emoji, IDX), else every 10th image of
// an image folder. `held_out` is empty when a folder has fewer than 10 images.
void load_splits(const VaeTrainOptions& o, Dataset& train, Dataset& held_out) {
  if (o.data == "emoji" || is_idx_dataset(o.data)) {
    train = load_dataset(o.data, "train", o.image_size, o.channels);
    held_out = load_dataset(o.data, "test", o.image_size, o.channels);
    return;
  }
  Dataset all = load_dataset(o.data, "train", o.image_size, o.channels);
  train = held_out = all;
  held_out.images = torch::Tensor();
  if (all.size() < 10) return;
  std::vector<int64_t> tr, te;
  for (int64_t i = 0; i < all.size(); ++i) (i % 10 == 9 ? te : tr).push_back(i);
  auto ti = torch::tensor(tr, torch::kInt64), ei = torch::tensor(te, torch::kInt64);
  train.images = all.images.index_select(0, ti);
  held_out.images = all.images.index_select(0, ei);
  if (all.labelled()) {
    train.labels = all.labels.index_select(0, ti);
    held_out.labels = all.labels.index_select(0, ei);
  }
  train.names.clear();
  held_out.names.clear();
}

AutoencoderKLConfig make_config(const VaeTrainOptions& o, const Dataset& data) {
  nlohmann::json j;
  if (!o.init.empty()) {
    const std::string path = o.init + "/config.json";
    if (!fs::is_regular_file(path)) throw Error("--init " + o.init + ": no config.json (not an AutoencoderKL folder)");
    try {
      j = nlohmann::json::parse(read_file(path));
    } catch (const nlohmann::json::exception& e) {
      throw Error(path + ": invalid JSON: " + e.what());
    }
  } else if (fs::is_regular_file(o.config)) {
    try {
      j = nlohmann::json::parse(read_file(o.config));
    } catch (const nlohmann::json::exception& e) {
      throw Error(o.config + ": invalid JSON: " + e.what());
    }
  } else {
    j = vae_preset(o.config, data.channels(), data.image_size());
  }
  AutoencoderKLConfig cfg = AutoencoderKLConfig::from_json(j);
  cfg.validate();
  if (cfg.in_channels != data.channels() || cfg.out_channels != data.channels())
    throw Error(o.config + ": in_channels " + std::to_string(cfg.in_channels) + " / out_channels " +
                std::to_string(cfg.out_channels) + " but the data has " + std::to_string(data.channels()) +
                " channels");
  const int64_t f = cfg.downsample_factor();
  if (data.image_size() % f != 0)
    throw Error(o.data + ": image size " + std::to_string(data.image_size()) + " is not divisible by the VAE's " +
                "downsampling factor " + std::to_string(f) + " (" + std::to_string(cfg.block_out_channels.size()) +
                " levels in " + o.config + "); pick --image-size as a multiple of " + std::to_string(f));
  if (!o.init.empty()) {
    // Checked here as well as at load, so that the error names --init rather than a shape.
    if (cfg.in_channels != data.channels())
      throw Error("--init " + o.init + ": the VAE takes " + std::to_string(cfg.in_channels) +
                  " channel(s) but the data has " + std::to_string(data.channels()));
  }
  cfg.sample_size = data.image_size();
  return cfg;
}

struct Smoothed {
  double loss = NAN, recon = NAN, kl = NAN, psnr = NAN, d_loss = NAN, perceptual = NAN;
  void add(double& s, double v) { s = std::isnan(s) ? v : 0.98 * s + 0.02 * v; }
  torch::Tensor to_tensor() const {
    return torch::tensor({loss, recon, kl, psnr, d_loss, perceptual}, torch::kFloat64);
  }
  void from_tensor(const torch::Tensor& t) {
    auto a = t.to(torch::kFloat64).contiguous();
    const double* p = a.data_ptr<double>();
    loss = p[0], recon = p[1], kl = p[2], psnr = p[3], d_loss = p[4];
    perceptual = a.numel() > 5 ? p[5] : NAN;  // checkpoints from before the perceptual loss hold 5
  }
};

std::string fmt(double v) {
  if (std::isnan(v)) return "";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

void write_plots(const std::string& out) {
  auto cols = read_csv_columns(out + "/metrics.csv");
  PlotSeries recon{"reconstruction loss", cols["step"], cols["recon"]}, psnr{"PSNR (dB)", cols["step"], cols["psnr"]};
  std::vector<PlotSeries> losses = {recon};
  if (cols.count("perceptual") &&
      std::any_of(cols["perceptual"].begin(), cols["perceptual"].end(), [](double v) { return std::isfinite(v); }))
    losses.push_back({"perceptual loss", cols["step"], cols["perceptual"]});
  PlotOptions po;
  po.title = "VAE reconstruction loss";
  po.xlabel = "step";
  po.ylabel = "loss";
  po.log_y = true;
  save_plot(out + "/loss.png", losses, po);
  po.title = "VAE training PSNR";
  po.ylabel = "dB";
  po.log_y = false;
  save_plot(out + "/psnr.png", {psnr}, po);
}

}  // namespace

VaeTrainResult train_vae(const VaeTrainOptions& opt) {
  validate(opt);
  torch::Device device = parse_device(opt.device);
  const std::string out = opt.out;
  const std::string ckpt_dir = out + "/checkpoint";
  nlohmann::json opts_now = options_json(opt);
  Distributed* dist = opt.dist && opt.dist->world_size() > 1 ? opt.dist.get() : nullptr;
  const int rank = dist ? dist->rank() : 0, world = dist ? dist->world_size() : 1;
  const bool is_main = rank == 0;
  const bool quiet = opt.quiet || !is_main;
  const std::optional<CheckpointState> resumed =
      open_run(out, opts_now,
               {"data", "config", "image_size", "channels", "global_batch", "seed", "flip", "recon_loss", "kl_weight",
                "disc_weight", "disc_start", "disc_adaptive", "disc_channels", "init", "freeze_encoder"},
               opt.resume, opt.quiet, dist);

  Dataset data, held_out;
  load_splits(opt, data, held_out);
  if (data.size() < 1) throw Error(opt.data + ": dataset is empty");
  const AutoencoderKLConfig cfg = make_config(opt, data);
  const bool has_held_out = held_out.images.defined() && held_out.size() > 0;
  const Dataset& eval_set = has_held_out ? held_out : data;

  if (opt.perceptual_weight > 0) {
    // One image through the perceptual loss before anything is written: a feature network that
    // cannot take this data fails here, with its own message.
    torch::NoGradGuard ng;
    const int64_t n = std::min<int64_t>(2, data.size());
    auto probe = data.images.narrow(0, 0, n).to(torch::kFloat32).div(127.5).sub(1.0).to(device);
    auto d = opt.perceptual(probe, probe);
    if (!d.defined() || d.dim() != 1 || d.size(0) != n)
      throw Error((opt.perceptual_source.empty() ? std::string("perceptual loss") : opt.perceptual_source) +
                  ": expected one distance per image");
  }

  torch::manual_seed(opt.seed);
  AutoencoderKL model(cfg), ema(cfg);
  {
    torch::NoGradGuard ng;
    if (!opt.init.empty()) {
      AutoencoderKL init = load_autoencoder_kl(opt.init);
      nn::load_state_dict(*model, nn::state_dict(*init), opt.init);
    }
    nn::load_state_dict(*ema, nn::state_dict(*model), "initial weights");
  }
  // With a frozen encoder only the decoder side (post_quant_conv + decoder) is trained, and the
  // EMA touches only those weights, so the encoder stays bit-identical to --init.
  if (opt.freeze_encoder) {
    for (auto& p : model->encoder->parameters()) p.set_requires_grad(false);
    if (model->quant_conv) {
      for (auto& p : model->quant_conv->parameters()) p.set_requires_grad(false);
    }
  }
  if (opt.perceptual_weight > 0 && !quiet)
    std::fprintf(stderr, "perceptual loss: %s, weight %g\n",
                 opt.perceptual_source.empty() ? "supplied network" : opt.perceptual_source.c_str(),
                 opt.perceptual_weight);
  model->to(device);
  ema->to(device);
  model->train();
  ema->eval();
  for (auto& p : ema->parameters()) p.set_requires_grad(false);
  const bool use_disc = opt.disc_weight > 0;
  PatchDiscriminator disc{nullptr};
  if (use_disc) {
    disc = PatchDiscriminator(cfg.in_channels, opt.disc_channels, patch_discriminator_layers(data.image_size()));
    disc->to(device);
    disc->train();
  }

  auto named_params = [](torch::nn::Module& m) {
    std::vector<std::pair<std::string, torch::Tensor>> named;
    for (auto& p : m.named_parameters(true))
      if (p.value().requires_grad()) named.emplace_back(p.key(), p.value());
    return named;
  };
  // LDM's Adam betas (0.5, 0.9) for both the autoencoder and the discriminator.
  AdamW optimizer(named_params(*model), AdamW::Options{0.5, 0.9, 1e-8, opt.weight_decay});
  std::optional<AdamW> disc_opt;
  if (use_disc) disc_opt.emplace(named_params(*disc), AdamW::Options{0.5, 0.9, 1e-8, 0.0});
  // The trained parameters and their EMA twins, in the same order.
  std::vector<torch::Tensor> params, ema_params;
  {
    auto ema_named = ema->named_parameters(true);
    for (auto& p : model->named_parameters(true))
      if (p.value().requires_grad()) {
        params.push_back(p.value());
        ema_params.push_back(ema_named[p.key()]);
      }
  }

  LoopState state;
  Smoothed sm;
  if (resumed) {
    load_checkpoint(ckpt_dir, *resumed, *model, *ema, optimizer);
    state.step = resumed->step;
    state.trained_seconds = resumed->seconds;
    sm.from_tensor(load_checkpoint_extra(ckpt_dir, "vae_state").at("smoothed"));
    if (use_disc) {
      nn::load_state_dict(*disc, load_checkpoint_extra(ckpt_dir, "discriminator"), ckpt_dir + "/discriminator");
      auto st = load_checkpoint_extra(ckpt_dir, "disc_optimizer");
      disc_opt->load_state(st, st.at("steps").item<int64_t>(), ckpt_dir + "/disc_optimizer");
    }
    if (state.step >= opt.steps)
      throw Error(ckpt_dir + ": already at step " + std::to_string(state.step) + " (raise --steps to train further)");
  }
  // Identical weights on every rank: rank 0's (a fresh run's initialisation, or its checkpoint).
  if (dist) {
    std::vector<torch::Tensor> state_tensors;
    for (torch::nn::Module* m :
         {static_cast<torch::nn::Module*>(model.get()), static_cast<torch::nn::Module*>(ema.get()),
          use_disc ? static_cast<torch::nn::Module*>(disc.get()) : nullptr}) {
      if (!m) continue;
      for (auto& p : m->parameters()) state_tensors.push_back(p);
      for (auto& b : m->buffers()) state_tensors.push_back(b);
    }
    dist->broadcast(state_tensors, "the initial weights");
  }
  if (is_main)
    start_run_files(out, opts_now, "step,loss,recon,kl,psnr,d_loss,lr,img_per_s,elapsed_s,perceptual", !resumed);
  // Runs begun before the perceptual column keep their nine columns.
  const bool csv_perceptual = !is_main || read_file(out + "/metrics.csv").find(",perceptual") != std::string::npos;
  if (!quiet) {
    int64_t nparams = 0, ntrained = 0;
    for (auto& p : model->parameters()) nparams += p.numel();
    for (auto& p : params) ntrained += p.numel();
    char trained[64] = "";
    if (ntrained != nparams) std::snprintf(trained, sizeof trained, " (%.2fM trained: decoder side)", ntrained / 1e6);
    std::fprintf(stderr,
                 "diffuse train-vae: %lld images %dx%dx%d (%lld held out) | AutoencoderKL %.2fM parameters%s, f=%lld, "
                 "%lld latent channels%s | %s | %s\n",
                 static_cast<long long>(data.size()), data.channels(), data.image_size(), data.image_size(),
                 static_cast<long long>(has_held_out ? held_out.size() : 0), nparams / 1e6, trained,
                 static_cast<long long>(cfg.downsample_factor()), static_cast<long long>(cfg.latent_channels),
                 use_disc ? " + PatchGAN" : "", device.str().c_str(), runtime_summary().c_str());
    print_run_layout(opt.batch, dist, 0, resumed.has_value(), state.step);
  }

  // Eight fixed held-out images, spread over the set (emoji: over the subgroups), for the grids.
  const int64_t n_grid = std::min<int64_t>(8, eval_set.size());
  const torch::Tensor grid_inputs =
      eval_set.images.index_select(0, torch::arange(n_grid, torch::kInt64) * (eval_set.size() / n_grid))
          .to(torch::kFloat32)
          .div(127.5)
          .sub(1.0);
  auto write_grid = [&](int64_t at_step) {
    torch::NoGradGuard ng;
    auto rec = ema->forward(grid_inputs.to(device)).clamp(-1, 1).to(torch::kCPU);
    auto grid = make_grid(torch::cat({grid_inputs, rec}), static_cast<int>(n_grid), 2, 1.0);
    char name[64];
    std::snprintf(name, sizeof name, "/samples/step_%07lld.png", static_cast<long long>(at_step));
    std::string text = "reconstructions at step " + std::to_string(at_step) + " (top: input, bottom: output)";
    write_png(out + name, to_image(grid), {{"parameters", text}});
    write_png(out + "/samples/latest.png", to_image(grid), {{"parameters", text}});
  };

  double scaling = 1.0;
  auto save_vae_folder = [&] {
    scaling = opt.freeze_encoder ? cfg.scaling_factor
                                 : latent_scaling_factor(ema, data, opt.scale_batches, opt.batch * world, opt.seed);
    nlohmann::json j = cfg.to_json();
    j["scaling_factor"] = scaling;
    auto sd = nn::state_dict(*ema);
    model_io::save_folder(out, j, std::map<std::string, torch::Tensor>(sd.begin(), sd.end()));
  };
  auto save_checkpoint_and_model = [&] {
    CheckpointExtras extras;
    extras["vae_state"] = {{"smoothed", sm.to_tensor()}};
    if (use_disc) {
      auto sd = nn::state_dict(*disc);
      extras["discriminator"] = std::map<std::string, torch::Tensor>(sd.begin(), sd.end());
      auto st = disc_opt->state();
      st["steps"] = torch::tensor(disc_opt->steps(), torch::kInt64);
      extras["disc_optimizer"] = st;
    }
    save_checkpoint(ckpt_dir, CheckpointState{state.step, sm.loss, state.trained_seconds, opts_now}, *model, *ema,
                    optimizer, extras);
    save_vae_folder();
  };

  const double disc_lr = opt.disc_lr > 0 ? opt.disc_lr : opt.lr;
  const double pixels = static_cast<double>(data.channels()) * data.image_size() * data.image_size();
  BatchLoader loader(data, opt.batch, opt.seed, opt.flip, state.step, 4, rank, world);
  NonFiniteGuard nonfinite(opt.max_nonfinite_steps);
  GradientSync sync(opt.dist, params);
  std::unique_ptr<GradientSync> disc_sync;
  if (use_disc) {
    std::vector<torch::Tensor> dp;
    for (auto& p : disc->parameters()) dp.push_back(p);
    disc_sync = std::make_unique<GradientSync>(opt.dist, dp);
  }
  const int64_t row0 = static_cast<int64_t>(rank) * opt.batch, global_rows = static_cast<int64_t>(world) * opt.batch;
  std::unique_ptr<std::ofstream> batch_log;
  if (!opt.batch_log.empty())
    batch_log = std::make_unique<std::ofstream>(
        world > 1 ? opt.batch_log + ".rank" + std::to_string(rank) : opt.batch_log, std::ios::app);
  double lr = 0;

  LoopOptions lo;
  lo.label = "train-vae";
  lo.out = out;
  lo.steps = opt.steps;
  lo.save_every = opt.save_every;
  lo.sample_every = opt.sample_every;
  lo.images_per_step = static_cast<int64_t>(opt.batch) * world;
  lo.quiet = opt.quiet;
  lo.dist = dist;
  LoopCallbacks cb;
  cb.step = [&](int64_t step) {
    lr = scheduled_lr(opt.lr, step, opt.warmup, opt.lr_schedule, opt.steps);
    Batch b = loader.next();
    if (batch_log) {
      *batch_log << b.step;
      for (int64_t i : b.indices) *batch_log << ' ' << i;
      *batch_log << '\n' << std::flush;
    }
    const std::string at_step = " at step " + std::to_string(step + 1);
    auto gen = at::detail::createCPUGenerator(mix_seed(opt.seed, static_cast<uint64_t>(b.step)));
    auto x = b.images.to(device);
    optimizer.zero_grad();
    LatentDistribution post;
    if (opt.freeze_encoder) {
      torch::NoGradGuard ng;
      post = model->encode(x);
    } else {
      post = model->encode(x);
    }
    auto noise_shape = post.mean.sizes().vec();
    noise_shape[0] = global_rows;  // drawn for the global batch: this process's rows of it
    auto noise = torch::randn(noise_shape, gen).narrow(0, row0, x.size(0)).to(device);
    auto rec = model->decode(post.mean + post.std() * noise);
    auto diff = rec - x;
    auto rec_loss = opt.recon_loss == "l1" ? diff.abs().mean() : diff.pow(2).mean();
    // KL to N(0, 1), summed over latent elements, averaged over the batch (LDM's kl_loss).
    auto kl = (0.5 * (post.mean.pow(2) + post.logvar.exp() - 1.0 - post.logvar)).sum({1, 2, 3}).mean();
    auto loss = rec_loss + (opt.kl_weight / pixels) * kl;
    torch::Tensor p_loss;
    if (opt.perceptual_weight > 0) {
      p_loss = opt.perceptual(rec, x).mean();
      loss = loss + opt.perceptual_weight * p_loss;
    }
    const bool adversarial = use_disc && step >= opt.disc_start;
    if (adversarial) {
      auto g_loss = hinge_g_loss(disc->forward(rec));
      double w = opt.disc_weight;
      if (opt.disc_adaptive) {
        auto last = model->decoder->conv_out->weight;
        // LDM balances against the whole reconstruction term (pixel + perceptual).
        auto nll = p_loss.defined() ? rec_loss + opt.perceptual_weight * p_loss : rec_loss;
        auto gr = torch::autograd::grad({nll}, {last}, {}, /*retain_graph=*/true)[0];
        auto gg = torch::autograd::grad({g_loss}, {last}, {}, /*retain_graph=*/true)[0];
        if (dist) dist->all_reduce_mean({gr, gg}, "the adaptive weight's gradients" + at_step);
        w *= std::min(1e4, gr.norm().item<double>() / (gg.norm().item<double>() + 1e-4));
      }
      loss = loss + w * g_loss;
    }
    sync.arm("gradients" + at_step);  // all-reduced as backward produces them
    loss.backward();
    // The logged terms, averaged over the ranks (one all-reduce).
    auto f64 = [](const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kFloat64); };
    auto terms =
        torch::stack({f64(loss), f64(rec_loss), f64(kl), f64(psnr_per_image(rec.detach().clamp(-1, 1), x).mean()),
                      p_loss.defined() ? f64(p_loss) : torch::zeros({}, torch::kFloat64)});
    if (dist) {
      sync.finish("gradients" + at_step);
      dist->all_reduce_mean({terms}, "the losses" + at_step);
    }
    const double step_loss = terms[0].item<double>();
    if (!nonfinite.ok(step_loss, params, step)) return;  // the batch is consumed: resuming keeps the data order
    if (opt.grad_clip > 0) clip_grad_norm(params, opt.grad_clip);
    optimizer.step(lr);
    double d_loss = NAN;
    if (adversarial) {
      disc_opt->zero_grad();
      auto dl = hinge_d_loss(disc->forward(x), disc->forward(rec.detach()));
      dl.backward();
      if (dist) disc_sync->finish("discriminator gradients" + at_step);
      disc_opt->step(scheduled_lr(disc_lr, step, opt.warmup, opt.lr_schedule, opt.steps));
      auto dl_mean = dl.detach().to(torch::kCPU, torch::kFloat64).reshape({1});
      if (dist) dist->all_reduce_mean({dl_mean}, "the discriminator loss" + at_step);
      d_loss = dl_mean.item<double>();
      // Batch-norm statistics come from each rank's batch: rank 0's are kept on every rank (as DDP
      // broadcasts buffers), so the replicas stay identical.
      if (dist) dist->broadcast(disc->buffers(), "the discriminator's batch-norm statistics" + at_step);
    }
    update_ema(ema_params, params, opt.ema_decay, step);
    sm.add(sm.loss, step_loss);
    sm.add(sm.recon, terms[1].item<double>());
    sm.add(sm.kl, terms[2].item<double>());
    sm.add(sm.psnr, terms[3].item<double>());
    if (!std::isnan(d_loss)) sm.add(sm.d_loss, d_loss);
    if (p_loss.defined()) sm.add(sm.perceptual, terms[4].item<double>());
  };
  cb.progress_text = [&] {
    char text[128];
    if (std::isnan(sm.perceptual))
      std::snprintf(text, sizeof text, "rec %.4f kl %.1f psnr %.2f dB", sm.recon, sm.kl, sm.psnr);
    else
      std::snprintf(text, sizeof text, "rec %.4f perc %.4f kl %.1f psnr %.2f dB", sm.recon, sm.perceptual, sm.kl,
                    sm.psnr);
    return std::string(text);
  };
  cb.metrics_row = [&](int64_t step, double ips, double seconds, double) {
    return std::to_string(step) + "," + fmt(sm.loss) + "," + fmt(sm.recon) + "," + fmt(sm.kl) + "," + fmt(sm.psnr) +
           "," + fmt(sm.d_loss) + "," + fmt(lr) + "," + fmt(ips) + "," + fmt(seconds) +
           (csv_perceptual ? "," + fmt(sm.perceptual) : std::string()) + "\n";
  };
  cb.save = save_checkpoint_and_model;
  cb.plots = [&] { write_plots(out); };
  if (opt.sample_every > 0) cb.sample = write_grid;
  cb.finish_text = [&] { return "psnr " + fmt(sm.psnr) + " dB"; };
  const LoopResult loop = run_training_loop(lo, state, cb);

  VaeTrainResult result;
  result.steps = state.step;
  result.final_loss = sm.loss;
  result.train_psnr = sm.psnr;
  result.interrupted = loop.interrupted;
  if (loop.interrupted || !is_main) {  // rank 0 alone measures and writes the final metrics
    result.scaling_factor = scaling;
    result.seconds = loop.seconds;
    return result;
  }
  const int64_t step = state.step;
  const double trained_seconds = state.trained_seconds;
  const auto t_final = std::chrono::steady_clock::now();

  // Final measurements on the saved (EMA) weights.
  const int64_t n_eval = std::min<int64_t>(opt.eval_images, eval_set.size());
  result.heldout_psnr = reconstruction_psnr(ema, eval_set.images.narrow(0, 0, n_eval), opt.batch);
  result.heldout_images = has_held_out ? n_eval : 0;
  result.scaling_factor = scaling;
  result.seconds = loop.seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - t_final).count();
  nlohmann::json m = {
      {"steps", step},
      {"heldout_psnr_db", result.heldout_psnr},
      {"heldout_images", result.heldout_images},
      {"psnr_on", has_held_out ? "held-out images" : "training images (the data has no held-out split)"},
      {"train_psnr_db", sm.psnr},
      {"recon_loss", sm.recon},
      {"kl", sm.kl},
      {"perceptual", std::isnan(sm.perceptual) ? nlohmann::json() : nlohmann::json(sm.perceptual)},
      {"scaling_factor", scaling},
      {"train_seconds", trained_seconds},
      {"data", opt.data},
      {"image_size", data.image_size()},
      {"latent_shape",
       {cfg.latent_channels, data.image_size() / cfg.downsample_factor(),
        data.image_size() / cfg.downsample_factor()}}};
  write_file_atomically(out + "/metrics.json", m.dump(2) + "\n");
  if (!opt.quiet)
    std::fprintf(stderr, "held-out reconstruction PSNR %.2f dB over %lld images, scaling_factor %.5f\n",
                 result.heldout_psnr, static_cast<long long>(n_eval), scaling);
  return result;
}

}  // namespace diffuse
