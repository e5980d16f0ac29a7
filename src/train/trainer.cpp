#include "train/trainer.h"

#include <cmath>
#include <cstdio>
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
#include "nn/autocast.h"
#include "nn/state_dict.h"
#include "pipelines/pixel_pipeline.h"
#include "pipelines/superres.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/compute_weights.h"
#include "train/dataset.h"
#include "train/diffusion_objective.h"
#include "train/distributed.h"
#include "train/latents.h"
#include "train/loader.h"
#include "train/presets.h"
#include "train/run_helpers.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {

void validate(const TrainOptions& o) {
  if (o.data.empty()) throw Error("--data is required");
  if (o.out.empty()) throw Error("--out is required");
  if (o.steps < 1) throw Error("--steps " + std::to_string(o.steps) + ": must be at least 1");
  if (o.batch < 1) throw Error("--batch " + std::to_string(o.batch) + ": must be at least 1");
  if (o.grad_accum < 1) throw Error("--grad-accum must be at least 1");
  if (!(o.lr > 0)) throw Error("--lr must be positive");
  if (o.lr_schedule != "constant" && o.lr_schedule != "cosine")
    throw Error("--lr-schedule " + o.lr_schedule + ": expected constant or cosine");
  if (o.ema_decay < 0 || o.ema_decay >= 1) throw Error("--ema must be in [0, 1)");
  if (o.class_dropout < 0 || o.class_dropout >= 1) throw Error("--class-dropout must be in [0, 1)");
  if (o.save_every < 0 || o.sample_every < 0 || o.eval_every < 0) throw Error("--*-every must be >= 0");
  if (o.eval_every > 0 && !o.evaluate)
    throw Error("--eval-every " + std::to_string(o.eval_every) + ": no evaluation given");
  if (o.min_snr_gamma < 0) throw Error("--min-snr-gamma must be >= 0");
  if (!o.init.empty() && !fs::is_directory(o.init)) throw Error("--init " + o.init + ": folder not found");
  parse_prediction(o.prediction);
  if (o.task != "generate" && o.task != "superres") throw Error("--task " + o.task + ": expected generate or superres");
  if (o.task == "superres") {
    if (o.scale < 2 || o.scale > 8) throw Error("--scale " + std::to_string(o.scale) + ": must be in [2, 8]");
    if (!o.latent.empty()) throw Error("--task superres: trains in pixel space (drop --latent)");
    if (is_dit_preset(o.config)) throw Error("--task superres: needs a UNet (--config " + o.config + " is a DiT)");
  }
}

nlohmann::json options_json(const TrainOptions& o) {
  return {{"data", o.data},
          {"config", o.config},
          {"latent", o.latent},
          {"task", o.task},
          {"scale", o.task == "superres" ? o.scale : 0},
          {"image_size", o.image_size},
          {"steps", o.steps},
          {"batch", o.batch},
          {"processes", o.dist ? o.dist->world_size() : 1},
          {"global_batch", o.batch * (o.dist ? o.dist->world_size() : 1)},
          {"grad_accum", o.grad_accum},
          {"lr", o.lr},
          {"lr_schedule", o.lr_schedule},
          {"warmup", o.warmup},
          {"weight_decay", o.weight_decay},
          {"grad_clip", o.grad_clip},
          {"ema_decay", o.ema_decay},
          {"class_dropout", o.class_dropout},
          {"prediction", o.prediction},
          {"beta_schedule", o.beta_schedule},
          {"num_train_timesteps", o.num_train_timesteps},
          {"min_snr_gamma", o.min_snr_gamma},
          {"flip", o.flip},
          {"bf16", o.bf16},
          {"seed", o.seed},
          {"init", o.init}};
}

// Options that change the meaning of a checkpoint: a resumed run must keep them.
const std::vector<std::string> kResumeKeys = {"data",       "config",        "latent",
                                              "image_size", "global_batch",  "grad_accum",
                                              "prediction", "beta_schedule", "num_train_timesteps",
                                              "seed",       "flip",          "class_dropout",
                                              "init",       "task",          "scale"};

// The fid column of metrics.csv (empty without an evaluation at the row's step).
std::string fid_column(double fid) {
  if (std::isnan(fid)) return ",";
  char buf[32];
  std::snprintf(buf, sizeof buf, ",%.4g", fid);
  return buf;
}

void write_loss_plot(const std::string& out) {
  std::ifstream f(out + "/metrics.csv");
  std::string line;
  std::getline(f, line);
  PlotSeries loss{"loss (EMA-smoothed)", {}, {}}, fid{"FID", {}, {}};
  while (std::getline(f, line)) {
    std::stringstream ss(line);
    std::string cell;
    std::vector<std::string> cells;
    while (std::getline(ss, cell, ',')) cells.push_back(cell);
    if (cells.size() < 2) continue;
    loss.x.push_back(std::stod(cells[0]));
    loss.y.push_back(std::stod(cells[1]));
    if (cells.size() >= 6 && !cells[5].empty()) {
      fid.x.push_back(std::stod(cells[0]));
      fid.y.push_back(std::stod(cells[5]));
    }
  }
  PlotOptions po;
  po.title = "training loss";
  po.xlabel = "step";
  po.ylabel = "loss";
  po.log_y = true;
  save_plot(out + "/loss.png", {loss}, po);
  if (!fid.x.empty()) {
    po.title = "FID during training";
    po.ylabel = "FID";
    save_plot(out + "/fid.png", {fid}, po);
  }
}

// A fine-tuned model keeps the meaning of its outputs and of its class ids.
void check_init_compatible(const PixelPipeline& init, const TrainOptions& o,
                           const std::vector<std::string>& data_classes) {
  const auto& s = init.scheduler;
  auto mismatch = [&](const std::string& option, const std::string& ours, const std::string& theirs) {
    throw Error("--init " + o.init + ": it was trained with " + option + " " + theirs + " but this run has " + ours +
                " (pass " + option + " " + theirs + ")");
  };
  if (s.prediction_type != o.prediction) mismatch("--prediction", o.prediction, s.prediction_type);
  if (s.beta_schedule != o.beta_schedule) mismatch("--beta-schedule", o.beta_schedule, s.beta_schedule);
  if (s.num_train_timesteps != o.num_train_timesteps)
    throw Error("--init " + o.init + ": its scheduler has " + std::to_string(s.num_train_timesteps) +
                " training timesteps but this run has " + std::to_string(o.num_train_timesteps));
  if (init.latent() != !o.latent.empty())
    throw Error("--init " + o.init + ": a " + (init.latent() ? "latent" : "pixel-space") + " model, but this run is " +
                (o.latent.empty() ? "in pixel space" : "on VAE latents") +
                (init.latent() ? " (pass --latent with a VAE of the same latent channels)" : ""));
  if (!init.class_names.empty() && !data_classes.empty() && init.class_names != data_classes) {
    size_t i = 0;
    while (i < init.class_names.size() && i < data_classes.size() && init.class_names[i] == data_classes[i]) ++i;
    throw Error("--init " + o.init + ": its classes differ from the data's (" +
                std::to_string(init.class_names.size()) + " vs " + std::to_string(data_classes.size()) +
                "; first difference at class " + std::to_string(i) + ": " +
                (i < init.class_names.size() ? init.class_names[i] : "none") + " vs " +
                (i < data_classes.size() ? data_classes[i] : "none") + ")");
  }
}

void write_sample_grid(const PixelPipeline& pipe, const std::string& path, int64_t step) {
  GenerateOptions g;
  const int per_row = 8;
  if (pipe.class_conditional()) {
    int k = std::min(16, static_cast<int>(pipe.class_names.size()));  // the first 16 classes
    g.n = k * per_row;
    for (int c = 0; c < k; ++c)
      for (int i = 0; i < per_row; ++i) g.classes.push_back(c);
    g.guidance = pipe.null_class >= 0 ? 2.0 : 1.0;
  } else {
    g.n = 4 * per_row;
  }
  g.sampler = "ddim";
  g.steps = 25;
  g.eta = 0.0;
  g.seed = 1000;
  auto res = generate(pipe, g);
  auto grid = make_grid(res.samples.clamp(-1, 1), per_row, 2, 1.0);
  write_png(
      path, to_image(grid),
      {{"parameters", "training samples at step " + std::to_string(step) + "\n" + generation_parameters(pipe, g, 0)}});
}

// Super-resolution progress: rows of low-resolution inputs (nearest-neighbour enlarged),
// bicubic upsampling, the model's output and the originals, for fixed training images.
void write_superres_grid(const PixelPipeline& pipe, const SuperResConfig& cfg, const torch::Tensor& hr,
                         const std::vector<std::string>& paths, int64_t step) {
  SuperResPipeline sr{pipe, cfg};
  UpscaleOptions u;
  u.sampler = "ddim";
  u.steps = 25;
  u.seed = 1000;
  auto lr = sr_downsample(hr, cfg.scale);
  auto rows = superres_comparison(lr, cfg.scale, upscale(sr, lr, cfg.scale, u), hr);
  auto grid = make_grid(rows.clamp(-1, 1), static_cast<int>(hr.size(0)), 2, 1.0);
  for (const auto& path : paths)
    write_png(path, to_image(grid),
              {{"parameters", "training samples at step " + std::to_string(step) + "\n" +
                                  upscale_parameters(sr, u, cfg.scale, hr.size(3), hr.size(2), 0)}});
}

}  // namespace

TrainResult train(const TrainOptions& opt) {
  validate(opt);
  torch::Device device = parse_device(opt.device);
  if (device.is_cuda()) {
    at::globalContext().setAllowTF32CuBLAS(true);
    at::globalContext().setAllowTF32CuDNN(true);
  }
  const std::string out = opt.out;
  const std::string ckpt_dir = out + "/checkpoint";
  nlohmann::json opts_now = options_json(opt);
  Distributed* dist = opt.dist && opt.dist->world_size() > 1 ? opt.dist.get() : nullptr;
  const int rank = dist ? dist->rank() : 0, world = dist ? dist->world_size() : 1;
  const bool is_main = rank == 0;
  const bool quiet = opt.quiet || !is_main;
  std::optional<CheckpointState> resumed = open_run(out, opts_now, kResumeKeys, opt.resume, opt.quiet, dist);

  AutoencoderKL vae{nullptr};
  if (!opt.latent.empty()) {
    vae = load_autoencoder_kl(opt.latent);
    vae->eval();
    for (auto& p : vae->parameters()) p.set_requires_grad(false);
  }
  Dataset data = load_dataset(opt.data, "train", opt.image_size, vae ? static_cast<int>(vae->config().in_channels) : 0);
  if (data.size() < 1) throw Error(opt.data + ": dataset is empty");
  const bool superres = opt.task == "superres";
  if (superres && data.image_size() % opt.scale != 0)
    throw Error(opt.data + ": image size " + std::to_string(data.image_size()) + " is not divisible by --scale " +
                std::to_string(opt.scale));
  const bool labelled = data.labelled() && !superres;  // super-resolution models are unconditional
  const int num_classes = labelled ? static_cast<int>(data.class_names.size()) : 0;
  // The tensors the network learns to denoise: images, or VAE latents (encoded once).
  int sample_channels = data.channels(), sample_size = data.image_size();
  if (vae) {
    const int64_t f = vae->config().downsample_factor();
    if (data.image_size() % f != 0)
      throw Error(opt.data + ": image size " + std::to_string(data.image_size()) +
                  " is not divisible by the VAE's downsampling factor " + std::to_string(f) + " (" + opt.latent + ")");
    sample_channels = static_cast<int>(vae->config().latent_channels);
    sample_size = data.image_size() / static_cast<int>(f);
  }

  // Model configuration: the --init model's, a preset or a diffusers config.json.
  nlohmann::json cfg_json;
  PixelPipeline init;
  if (!opt.init.empty()) {
    init = PixelPipeline::load(opt.init);
    cfg_json = init.net.config_json();
    check_init_compatible(init, opt, labelled ? data.class_names : std::vector<std::string>{});
  } else if (fs::is_regular_file(opt.config)) {
    try {
      cfg_json = nlohmann::json::parse(read_file(opt.config));
    } catch (const nlohmann::json::exception& e) {
      throw Error(opt.config + ": invalid JSON: " + e.what());
    }
  } else {
    cfg_json = model_preset(opt.config, sample_size, sample_channels, num_classes);
    if (superres) cfg_json["in_channels"] = 2 * sample_channels;  // + the upsampled low-resolution image
  }
  const std::string cfg_source = opt.init.empty() ? opt.config : opt.init;
  DiffusionNet model = DiffusionNet::from_config(cfg_json, cfg_source);  // initialised below
  const std::string what = vae ? "the VAE's latents have" : "the data has";
  if (superres && (model.is_dit() || model.unet()->config().out_channels != sample_channels ||
                   model.in_channels() != 2 * sample_channels))
    throw Error(cfg_source + ": --task superres needs a UNet2DModel with in_channels " +
                std::to_string(2 * sample_channels) + " and out_channels " + std::to_string(sample_channels) +
                " (the data has " + std::to_string(sample_channels) + " channels)");
  if (!superres && model.in_channels() != sample_channels)
    throw Error(cfg_source + ": in_channels " + std::to_string(model.in_channels()) + " but " + what + " " +
                std::to_string(sample_channels) + " channels");
  if (model.is_dit() && (model.sample_size() != sample_size || sample_size % model.size_multiple() != 0))
    throw Error(cfg_source + ": the DiT's sample_size is " + std::to_string(model.sample_size()) + " (patch " +
                std::to_string(model.size_multiple()) + ") but " + what + " size " + std::to_string(sample_size));
  const int64_t class_embeds = model.class_embeddings();
  if (labelled && class_embeds < num_classes)
    throw Error(cfg_source + ": " + std::to_string(class_embeds) + " class embeddings but the data has " +
                std::to_string(num_classes) + " classes");
  if (model.is_dit() && labelled && model.builtin_null_class() != num_classes)
    throw Error(cfg_source + ": num_embeds_ada_norm " + std::to_string(model.builtin_null_class()) +
                " but the data has " + std::to_string(num_classes) + " classes");

  PixelPipeline pipe;
  pipe.scheduler.beta_schedule = opt.beta_schedule;
  pipe.scheduler.prediction_type = opt.prediction;
  pipe.scheduler.num_train_timesteps = opt.num_train_timesteps;
  pipe.scheduler.clip_sample = !vae;  // latents are not bounded
  pipe.vae = vae;
  pipe.class_names = labelled ? data.class_names : std::vector<std::string>{};
  if (model.is_dit())
    pipe.null_class = model.builtin_null_class();
  else
    pipe.null_class = labelled && class_embeds > num_classes ? num_classes : -1;
  pipe.device = device;
  pipe.source = out;
  SuperResConfig sr_config;
  sr_config.scale = opt.scale;
  sr_config.high_resolution_size = sample_size;
  sr_config.low_resolution_size = sample_size / opt.scale;
  sr_config.channels = sample_channels;
  auto save_model = [&] {
    pipe.save(out);
    if (superres) write_superres_config(out + "/superres.json", sr_config);
  };
  // Fixed training images for the super-resolution progress grids.
  const torch::Tensor sr_grid_images =
      superres ? data.images.slice(0, 0, std::min<int64_t>(8, data.size())).to(torch::kFloat32) / 127.5 - 1.0
               : torch::Tensor();
  const bool always_null = model.is_dit() && !labelled;

  torch::manual_seed(opt.seed);  // parameter initialisation
  model = model.clone_architecture();
  if (init.net.defined()) {
    torch::NoGradGuard ng;
    nn::load_state_dict(model.module(), nn::state_dict(init.net.module()), opt.init);
    init = PixelPipeline();  // free the copy
  }
  model.module().to(device);
  model.module().train();
  DiffusionNet ema = model.clone_architecture();  // exponential moving average, saved as the model
  {
    torch::NoGradGuard ng;
    auto src = nn::state_dict(model.module());
    nn::load_state_dict(ema.module(), src, "initial weights");
  }
  ema.module().to(device);
  ema.module().eval();
  for (auto& p : ema.module().parameters()) p.set_requires_grad(false);
  pipe.net = ema;
  if (vae) {
    vae->to(device);
    data = encode_latent_dataset(vae, data, opt.flip, device, !quiet);
  }

  std::vector<std::pair<std::string, torch::Tensor>> named;
  std::vector<torch::Tensor> params;
  for (auto& p : model.module().named_parameters(true)) {
    named.emplace_back(p.key(), p.value());
    params.push_back(p.value());
  }
  AdamW optimizer(named, AdamW::Options{0.9, 0.999, 1e-8, opt.weight_decay});

  DiffusionObjectiveOptions oo;
  oo.prediction = opt.prediction;
  oo.class_dropout = opt.class_dropout;
  oo.null_class = pipe.null_class;
  oo.always_null = always_null;  // unconditional DiTs are trained (and sampled) with their null class
  oo.min_snr_gamma = opt.min_snr_gamma;
  const DiffusionObjective objective(make_alphas_cumprod(pipe.scheduler).to(device), oo);
  LoopState state;
  double smooth_loss = NAN;
  if (resumed) {
    load_checkpoint(ckpt_dir, *resumed, model.module(), ema.module(), optimizer);
    state.step = resumed->step;
    state.trained_seconds = resumed->seconds;
    smooth_loss = resumed->smooth_loss;
    if (state.step > opt.steps)
      throw Error(ckpt_dir + ": already at step " + std::to_string(state.step) + " (raise --steps to train further)");
  }
  // Identical weights on every rank: rank 0's (a fresh run's initialisation, or its checkpoint).
  if (dist) {
    std::vector<torch::Tensor> state_tensors;
    for (auto& p : model.module().parameters()) state_tensors.push_back(p);
    for (auto& b : model.module().buffers()) state_tensors.push_back(b);
    for (auto& p : ema.module().parameters()) state_tensors.push_back(p);
    for (auto& b : ema.module().buffers()) state_tensors.push_back(b);
    dist->broadcast(state_tensors, "the initial weights");
  }
  if (is_main) start_run_files(out, opts_now, "step,loss,lr,img_per_s,elapsed_s,fid", !resumed);

  if (!quiet) {
    int64_t nparams = 0;
    for (auto& p : params) nparams += p.numel();
    std::fprintf(stderr, "diffuse train: %lld %s %dx%dx%d, %d classes | %s %.2fM parameters | %s | %s\n",
                 static_cast<long long>(data.size()), vae ? "latents" : "images", sample_channels, sample_size,
                 sample_size, num_classes, model.class_name().c_str(), nparams / 1e6, device.str().c_str(),
                 runtime_summary().c_str());
    print_run_layout(opt.batch, dist, opt.grad_accum, resumed.has_value(), state.step);
  }

  if (state.step >= opt.steps && is_main) {
    // Relaunched after the final checkpoint (e.g. killed while writing the model): write it again.
    save_model();
    write_loss_plot(out);
    if (!opt.quiet)
      std::fprintf(stderr, "already at step %lld: the final model is written from the checkpoint\n",
                   static_cast<long long>(state.step));
  }
  // Single-process bf16 training: Linear layers compute with bf16 copies of their weights that
  // AdamW keeps current (data-parallel runs all-reduce the float32 parameters' gradients as
  // backward produces them, so they keep autocast's casts).
  std::optional<ComputeWeights> compute_weights;
  if (opt.bf16 && !dist) compute_weights.emplace(model.module(), optimizer);
  const int accum = opt.grad_accum;
  BatchLoader loader(data, opt.batch, opt.seed, opt.flip && !vae, state.step * accum, 4, rank, world);
  NonFiniteGuard nonfinite(opt.max_nonfinite_steps);
  GradientSync sync(opt.dist, params);
  const BatchSlice slice{static_cast<int64_t>(rank) * opt.batch, static_cast<int64_t>(world) * opt.batch};
  std::unique_ptr<std::ofstream> batch_log;
  if (!opt.batch_log.empty())
    batch_log = std::make_unique<std::ofstream>(
        world > 1 ? opt.batch_log + ".rank" + std::to_string(rank) : opt.batch_log, std::ios::app);
  double lr = 0;

  LoopOptions lo;
  lo.label = "train";
  lo.out = out;
  lo.steps = opt.steps;
  lo.save_every = opt.save_every;
  lo.sample_every = opt.sample_every;
  lo.eval_every = opt.eval_every;
  lo.images_per_step = static_cast<int64_t>(opt.batch) * world * accum;
  lo.quiet = opt.quiet;
  lo.dist = dist;
  LoopCallbacks cb;
  cb.step = [&](int64_t step) {
    lr = scheduled_lr(opt.lr, step, opt.warmup, opt.lr_schedule, opt.steps);
    optimizer.zero_grad();
    double step_loss = 0;
    for (int micro = 0; micro < accum; ++micro) {
      Batch b = loader.next();
      if (batch_log) {
        *batch_log << b.step;
        for (int64_t i : b.indices) *batch_log << ' ' << i;
        *batch_log << '\n' << std::flush;
      }
      auto gen = at::detail::createCPUGenerator(mix_seed(opt.seed, static_cast<uint64_t>(b.step)));
      auto x0 = vae ? sample_scaled_latents(vae->config(), b.images, gen, slice.offset, slice.total).to(device)
                    : b.images.to(device);
      DiffusionDraw d = objective.draw(x0, labelled ? b.labels : torch::Tensor(), gen, slice);
      // Super-resolution conditioning: the low-resolution image, upsampled, as extra channels.
      auto net_in = superres ? superres_input(d.xt, sr_condition(x0, opt.scale)) : d.xt;
      torch::Tensor out_t;
      {
        nn::AutocastGuard autocast(device, opt.bf16);
        out_t = model.forward(net_in, d.t.to(torch::kFloat32), d.labels).to(torch::kFloat32);
      }
      auto loss = objective.loss(out_t, d) / accum;
      // The last micro-batch's gradients are all-reduced as backward produces them.
      if (micro == accum - 1) sync.arm("gradients at step " + std::to_string(step + 1));
      loss.backward();
      if (compute_weights) compute_weights->gather_gradients();
      step_loss += loss.item<double>();
    }
    if (dist) {
      sync.finish("gradients at step " + std::to_string(step + 1));
      auto l = torch::tensor({step_loss}, torch::kFloat64);
      dist->all_reduce_mean({l}, "the loss at step " + std::to_string(step + 1));
      step_loss = l.item<double>();
    }
    if (nonfinite.ok(step_loss, params, step)) {
      // Clipping scales the gradients inside the update.
      optimizer.step(lr, opt.grad_clip > 0 ? grad_norm(params, opt.grad_clip).scale : 1.0);
      update_ema(ema.module().parameters(), model.module().parameters(), opt.ema_decay, step);
      smooth_loss = std::isnan(smooth_loss) ? step_loss : 0.98 * smooth_loss + 0.02 * step_loss;
    }
    // A skipped step still consumes its batch, so resuming sees the same data order.
  };
  LossReport report;
  report.loss = &smooth_loss;
  report.lr = &lr;
  report.extra_columns = fid_column;
  set_loss_callbacks(cb, report);
  cb.save = [&] {
    save_checkpoint(ckpt_dir, CheckpointState{state.step, smooth_loss, state.trained_seconds, opts_now}, model.module(),
                    ema.module(), optimizer);
    save_model();
  };
  cb.plots = [&] { write_loss_plot(out); };
  cb.sample = [&](int64_t step) {
    char name[64];
    std::snprintf(name, sizeof name, "/samples/step_%07lld.png", static_cast<long long>(step));
    if (superres) {
      write_superres_grid(pipe, sr_config, sr_grid_images, {out + name, out + "/samples/latest.png"}, step);
    } else {
      write_sample_grid(pipe, out + name, step);
      write_sample_grid(pipe, out + "/samples/latest.png", step);
    }
  };
  if (opt.evaluate) cb.evaluate = [&](int64_t) { return opt.evaluate(out); };
  const LoopResult lr_result = run_training_loop(lo, state, cb);

  TrainResult result;
  result.steps = state.step;
  result.final_loss = smooth_loss;
  result.seconds = lr_result.seconds;
  result.interrupted = lr_result.interrupted;
  return result;
}

}  // namespace diffuse
