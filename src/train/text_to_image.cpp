#include "train/text_to_image.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/image.h"
#include "core/json_file.h"
#include "core/plot.h"
#include "core/progress.h"
#include "core/runtime.h"
#include "core/safetensors.h"
#include "diffusion/denoiser.h"
#include "diffusion/schedule.h"
#include "nn/autocast.h"
#include "nn/state_dict.h"
#include "pipelines/scheduler_config.h"
#include "pipelines/sd_pipeline.h"
#include "train/adamw.h"
#include "train/captioned.h"
#include "train/checkpoint.h"
#include "train/compute_weights.h"
#include "train/diffusion_objective.h"
#include "train/distributed.h"
#include "train/loader.h"
#include "train/run_helpers.h"
#include "train/train_loop.h"

namespace fs = std::filesystem;

namespace diffuse {

std::vector<std::pair<std::string, std::string>> text_encoder_presets() {
  return {{"clip-tiny",
           "CLIP text encoder, 2 layers x 64 wide, 4 heads (0.1M parameters + 64 per token: 3.2M with "
           "CLIP's whole vocabulary)"},
          {"clip-small",
           "CLIP text encoder, 4 layers x 256 wide, 4 heads (3.2M parameters + 256 per token: 15.8M with "
           "CLIP's whole vocabulary)"}};
}

CLIPTextConfig text_encoder_preset(const std::string& name) {
  CLIPTextConfig c;  // CLIP's vocabulary, 77 positions, quick_gelu
  if (name == "clip-tiny") {
    c.hidden_size = 64;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.intermediate_size = 256;
  } else if (name == "clip-small") {
    c.hidden_size = 256;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.intermediate_size = 1024;
  } else {
    throw Error("text_encoder '" + name + "': not a preset (clip-tiny, clip-small) or a folder");
  }
  c.pad_token_id = 49407;  // <|endoftext|>, as the SD tokenizers pad
  c.eos_token_id = 49407;
  return c;
}

bool is_t2i_preset(const std::string& name) { return name == "t2i-tiny" || name == "t2i-small"; }

nlohmann::json t2i_unet_preset(const std::string& name, int sample_size, int channels, int cross_attention_dim) {
  nlohmann::json j = {{"_class_name", "UNet2DConditionModel"},
                      {"sample_size", sample_size},
                      {"in_channels", channels},
                      {"out_channels", channels},
                      {"cross_attention_dim", cross_attention_dim},
                      {"act_fn", "silu"},
                      {"flip_sin_to_cos", true},
                      {"freq_shift", 0}};
  if (name == "t2i-tiny") {
    j["block_out_channels"] = {32, 64};
    j["layers_per_block"] = 1;
    j["down_block_types"] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D"};
    j["up_block_types"] = {"CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
    j["attention_head_dim"] = 4;
    j["norm_num_groups"] = 8;
  } else if (name == "t2i-small") {
    j["block_out_channels"] = {64, 128, 256};
    j["layers_per_block"] = 2;
    j["down_block_types"] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"};
    j["up_block_types"] = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
    j["attention_head_dim"] = 8;
    j["norm_num_groups"] = 32;
  } else {
    throw Error("config '" + name + "': not a text-to-image preset (t2i-tiny, t2i-small) or a config.json");
  }
  return j;
}

void write_clip_tokenizer_folder(const std::string& dir, const std::string& bpe_file) {
  CLIPTokenizer::from_bpe_file(bpe_file.empty() ? CLIPTokenizer::builtin_vocab_path() : bpe_file).save(dir);
}

namespace {

// The networks trained together, under the names of their pipeline folders.
class T2INetsImpl : public torch::nn::Module {
 public:
  T2INetsImpl(const UNet2DConditionConfig& u, const std::optional<CLIPTextConfig>& t) {
    unet = register_module("unet", UNet2DConditionModel(u));
    if (t) text = register_module("text_encoder", CLIPTextModel(*t));
  }
  UNet2DConditionModel unet{nullptr};
  CLIPTextModel text{nullptr};  // null when the text encoder is frozen
};
TORCH_MODULE(T2INets);

void validate_t2i(const TextToImageOptions& o) {
  const auto& t = o.train;
  if (t.data.empty()) throw Error("--data is required");
  if (t.out.empty()) throw Error("--out is required");
  if (t.latent.empty())
    throw Error(
        "--latent is required for text-to-image: Stable Diffusion folders hold a VAE (e.g. --latent "
        "models/emoji-vae)");
  if (t.steps < 1) throw Error("--steps must be at least 1");
  if (t.batch < 1) throw Error("--batch must be at least 1");
  if (t.grad_accum != 1) throw Error("--grad-accum: not supported with --text-encoder");
  if (!(t.lr > 0)) throw Error("--lr must be positive");
  if (t.lr_schedule != "constant" && t.lr_schedule != "cosine")
    throw Error("--lr-schedule " + t.lr_schedule + ": expected constant or cosine");
  if (t.ema_decay < 0 || t.ema_decay >= 1) throw Error("--ema must be in [0, 1)");
  if (o.caption_dropout < 0 || o.caption_dropout >= 1) throw Error("--caption-dropout must be in [0, 1)");
  if (t.min_snr_gamma < 0) throw Error("--min-snr-gamma must be >= 0");
  if (!t.init.empty()) throw Error("--init: not supported with --text-encoder");
  if (!o.vocabulary.empty() && o.vocabulary != "captions" && o.vocabulary != "clip")
    throw Error("--vocab " + o.vocabulary + ": expected captions or clip");
  if (!o.vocabulary.empty() && fs::is_directory(o.text_encoder))
    throw Error("--vocab: only for a text encoder trained here (a preset); " + o.text_encoder + " has its tokenizer");
  if (t.task != "generate") throw Error("--task " + t.task + ": text-to-image generates");
  parse_prediction(t.prediction);
}

nlohmann::json t2i_options_json(const TextToImageOptions& o) {
  const auto& t = o.train;
  return {{"data", t.data},
          {"config", t.config},
          {"latent", t.latent},
          {"text_encoder", o.text_encoder},
          {"caption_ext", o.caption_ext},
          {"caption_dropout", o.caption_dropout},
          {"image_size", t.image_size},
          {"steps", t.steps},
          {"batch", t.batch},
          {"processes", t.dist ? t.dist->world_size() : 1},
          {"global_batch", t.batch * (t.dist ? t.dist->world_size() : 1)},
          {"lr", t.lr},
          {"lr_schedule", t.lr_schedule},
          {"warmup", t.warmup},
          {"weight_decay", t.weight_decay},
          {"grad_clip", t.grad_clip},
          {"ema_decay", t.ema_decay},
          {"prediction", t.prediction},
          {"beta_schedule", t.beta_schedule},
          {"num_train_timesteps", t.num_train_timesteps},
          {"min_snr_gamma", t.min_snr_gamma},
          {"bf16", t.bf16},
          {"seed", t.seed}};
}

const std::vector<std::string> kT2IResumeKeys = {
    "data",       "config",       "latent",     "text_encoder",  "caption_ext",         "caption_dropout",
    "image_size", "global_batch", "prediction", "beta_schedule", "num_train_timesteps", "seed"};

// The frozen text encoder of a folder: a CLIPTextModel folder, or a pipeline's text_encoder/ + tokenizer/.
struct FrozenText {
  CLIPTextModel model{nullptr};
  std::string tokenizer_dir;  // empty: the builtin CLIP vocabulary
};

FrozenText load_frozen_text(const std::string& dir) {
  FrozenText f;
  if (fs::exists(dir + "/text_encoder/config.json")) {
    f.model = load_clip_text_model(dir + "/text_encoder");
    if (fs::exists(dir + "/tokenizer/vocab.json")) f.tokenizer_dir = dir + "/tokenizer";
  } else {
    f.model = load_clip_text_model(dir);
  }
  if (f.tokenizer_dir.empty() && f.model->config().vocab_size != 49408)
    throw Error("--text-encoder " + dir + ": a vocabulary of " + std::to_string(f.model->config().vocab_size) +
                " tokens needs its tokenizer (give the pipeline folder that holds tokenizer/)");
  for (auto& p : f.model->parameters()) p.set_requires_grad(false);
  return f;
}

void save_text_encoder(const CLIPTextModel& m, const std::string& dir) {
  fs::create_directories(dir);
  write_file_atomically(dir + "/config.json", m->config().to_json().dump(2) + "\n");
  safetensors::save(dir + "/model.safetensors", nn::state_dict(*m), {{"format", "pt"}});
}

void write_t2i_loss_plot(const std::string& out) {
  auto cols = read_csv_columns(out + "/metrics.csv");
  if (cols["step"].empty()) return;
  PlotOptions po;
  po.title = "text-to-image training loss";
  po.xlabel = "step";
  po.ylabel = "loss (EMA-smoothed)";
  po.log_y = true;
  save_plot(out + "/loss.png", {{"loss", cols["step"], cols["loss"]}}, po);
}

}  // namespace

TrainResult train_text_to_image(const TextToImageOptions& opt) {
  validate_t2i(opt);
  const auto& to = opt.train;
  const torch::Device device = parse_device(to.device);
  const std::string out = to.out, ckpt_dir = out + "/checkpoint";
  nlohmann::json opts_now = t2i_options_json(opt);
  Distributed* dist = to.dist && to.dist->world_size() > 1 ? to.dist.get() : nullptr;
  const int rank = dist ? dist->rank() : 0, world = dist ? dist->world_size() : 1;
  const bool is_main = rank == 0, quiet = to.quiet || !is_main;
  const std::optional<CheckpointState> resumed = open_run(out, opts_now, kT2IResumeKeys, to.resume, to.quiet, dist);
  std::string vocabulary = opt.vocabulary.empty() ? "captions" : opt.vocabulary;
  if (resumed) {
    const std::string saved = resumed->options.value("vocabulary", std::string("clip"));
    if (!opt.vocabulary.empty() && opt.vocabulary != saved)
      throw Error(ckpt_dir + ": --resume with a different --vocab (checkpoint has " + saved + ", now " +
                  opt.vocabulary + ")");
    vocabulary = saved;
  }
  if (!fs::is_directory(opt.text_encoder)) opts_now["vocabulary"] = vocabulary;

  // VAE, data and latents (each image's posterior encoded once).
  AutoencoderKL vae = load_autoencoder_kl(to.latent);
  vae->eval();
  for (auto& p : vae->parameters()) p.set_requires_grad(false);
  const int f = static_cast<int>(vae->config().downsample_factor());
  CaptionedOptions co;
  co.caption_ext = opt.caption_ext;
  co.resolution = to.image_size > 0 ? to.image_size : 64;
  co.size_step = f;  // refined below once the UNet's depth is known
  // Text encoder: a preset trained here, or a frozen folder.
  std::optional<CLIPTextConfig> text_cfg;
  FrozenText frozen;
  if (fs::is_directory(opt.text_encoder))
    frozen = load_frozen_text(opt.text_encoder);
  else
    text_cfg = text_encoder_preset(opt.text_encoder);
  const int context = static_cast<int>(text_cfg ? text_cfg->hidden_size : frozen.model->config().hidden_size);
  const int latent_channels = static_cast<int>(vae->config().latent_channels);
  nlohmann::json unet_json;
  if (fs::is_regular_file(to.config)) {
    unet_json = read_json_file(to.config);
  } else {
    unet_json = t2i_unet_preset(to.config == "small" || to.config == "tiny" ? "t2i-" + to.config : to.config,
                                co.resolution / f, latent_channels, context);
  }
  UNet2DConditionConfig ucfg;
  try {
    ucfg = UNet2DConditionConfig::from_json(unet_json);
    ucfg.validate();
  } catch (const Error& e) {
    throw Error("--config " + to.config + ": " + e.what());
  }
  if (ucfg.in_channels != latent_channels || ucfg.out_channels != latent_channels)
    throw Error("--config " + to.config + ": in/out_channels must be the VAE's " + std::to_string(latent_channels) +
                " latent channels");
  if (ucfg.cross_attention_dim.at(0) != context)
    throw Error("--config " + to.config + ": cross_attention_dim " + std::to_string(ucfg.cross_attention_dim.at(0)) +
                " but the text encoder is " + std::to_string(context) + " wide");
  co.size_step = f << (ucfg.num_blocks() - 1);
  if (co.resolution % co.size_step != 0)
    throw Error("--image-size " + std::to_string(co.resolution) + ": must be a multiple of " +
                std::to_string(co.size_step) + " (VAE factor x UNet downsampling)");
  const CaptionedDataset data = load_captioned(to.data, co);
  SDPipeline enc;  // for its encode(): scaled posterior
  enc.vae = vae;
  enc.device = device;
  vae->to(device);
  std::vector<std::pair<torch::Tensor, torch::Tensor>> latents;  // per bucket: mean, std
  {
    Progress bar(data.size(), "encode", "img", !quiet);
    int64_t done = 0;
    for (const auto& b : data.buckets) {
      std::vector<torch::Tensor> m, s;
      for (int64_t i = 0; i < b.images.size(0); i += 32) {
        auto x = images_to_float(b.images.slice(0, i, std::min(b.images.size(0), i + 32)));
        auto post = enc.encode(x);
        m.push_back(post.mean.cpu());
        s.push_back(post.std().cpu());
        done += x.size(0);
        bar.update(done, "", static_cast<double>(x.size(0)), "img");
      }
      latents.emplace_back(torch::cat(m), torch::cat(s));
    }
    bar.finish("");
  }

  CLIPTokenizer tokenizer =
      frozen.tokenizer_dir.empty() ? CLIPTokenizer::builtin() : CLIPTokenizer::from_folder(frozen.tokenizer_dir);
  std::vector<int64_t> kept_tokens;  // --vocab captions: the CLIP ids of the reduced vocabulary
  if (text_cfg && vocabulary == "captions") tokenizer = tokenizer.reduced(data.captions, &kept_tokens);

  // Initialised with CLIP's whole vocabulary, then cut down: the same network as --vocab clip
  // trains (rows no caption uses never get a gradient), in a thirteenth of the embedding.
  torch::manual_seed(to.seed);  // parameter initialisation
  T2INets model(ucfg, text_cfg);
  T2INets ema(ucfg, text_cfg);
  if (!kept_tokens.empty())
    for (auto* nets : {&model, &ema}) (*nets)->text->keep_token_embeddings(kept_tokens);
  {
    torch::NoGradGuard ng;
    nn::load_state_dict(*ema, nn::state_dict(*model), "initial weights");
  }
  for (auto& p : ema->parameters()) p.set_requires_grad(false);
  model->to(device);
  ema->to(device);
  model->train();
  ema->eval();
  CLIPTextModel frozen_text = frozen.model;
  if (frozen_text) {
    frozen_text->to(device);
    frozen_text->eval();
  }
  const CLIPTextConfig tcfg = text_cfg ? *text_cfg : frozen_text->config();

  std::vector<std::pair<std::string, torch::Tensor>> named;
  std::vector<torch::Tensor> params;
  for (auto& p : model->named_parameters(true)) {
    named.emplace_back(p.key(), p.value());
    params.push_back(p.value());
  }
  AdamW optimizer(named, AdamW::Options{0.9, 0.999, 1e-8, to.weight_decay});

  NoiseScheduleConfig sched;
  sched.beta_schedule = to.beta_schedule;
  sched.prediction_type = to.prediction;
  sched.num_train_timesteps = to.num_train_timesteps;
  sched.clip_sample = false;  // latents are not bounded
  const auto alphas_cumprod = make_alphas_cumprod(sched).to(device);

  auto tokenize_all = [&](const std::vector<std::string>& caps) {
    const int64_t len = tcfg.max_position_embeddings;
    std::vector<int64_t> ids;
    for (const auto& c : caps) {
      auto t = tokenizer.tokenize(c, len, true);
      ids.insert(ids.end(), t.begin(), t.end());
    }
    return torch::tensor(ids, torch::kInt64).reshape({static_cast<int64_t>(caps.size()), len}).to(device);
  };
  auto encode_text = [&](T2INets& nets, const std::vector<std::string>& caps) {
    auto ids = tokenize_all(caps);
    if (nets->text) return nets->text->forward(ids).last_hidden_state;
    torch::NoGradGuard ng;
    return frozen_text->forward(ids).last_hidden_state;
  };

  // The EMA networks as a pipeline, for sample grids and the saved folder.
  auto ema_pipeline = [&] {
    SDPipeline p;
    p.unet = ema->unet;
    p.vae = vae;
    p.text = std::make_shared<SDTextEncoder>();
    p.text->tokenizer = tokenizer;
    p.text->model = ema->text ? ema->text : frozen_text;
    p.scheduler = sched;
    p.scheduler_class = "DDIMScheduler";
    p.device = device;
    p.source = out;
    return p;
  };
  std::vector<std::string> prompts = opt.sample_prompts;
  if (prompts.empty()) {
    std::set<std::string> seen;
    for (const auto& c : data.captions)
      if (prompts.size() < 8 && seen.insert(c).second) prompts.push_back(c);
  }
  auto save_pipeline = [&] {
    const std::string tmp = out + "/.pipeline.tmp";
    remove_tree(tmp);
    save_unet2d_condition(ema->unet, tmp + "/unet");
    save_text_encoder(ema->text ? ema->text : frozen_text, tmp + "/text_encoder");
    if (frozen.tokenizer_dir.empty()) {
      tokenizer.save(tmp + "/tokenizer");
    } else {
      fs::create_directories(tmp + "/tokenizer");
      for (const auto& e : fs::directory_iterator(frozen.tokenizer_dir))
        if (e.is_regular_file()) fs::copy_file(e.path(), tmp + "/tokenizer/" + e.path().filename().string());
    }
    save_autoencoder_kl(vae, tmp + "/vae");
    fs::create_directories(tmp + "/scheduler");
    auto sj = scheduler_config_json(sched, "DDIMScheduler");
    sj["set_alpha_to_one"] = false;
    sj["steps_offset"] = 1;
    write_file_atomically(tmp + "/scheduler/scheduler_config.json", sj.dump(2) + "\n");
    nlohmann::json index = {{"_class_name", "StableDiffusionPipeline"},
                            {"_diffusers_version", "0.28.2"},
                            {"feature_extractor", {nullptr, nullptr}},
                            {"image_encoder", {nullptr, nullptr}},
                            {"requires_safety_checker", false},
                            {"safety_checker", {nullptr, nullptr}},
                            {"scheduler", {"diffusers", "DDIMScheduler"}},
                            {"text_encoder", {"transformers", "CLIPTextModel"}},
                            {"tokenizer", {"transformers", "CLIPTokenizer"}},
                            {"unet", {"diffusers", "UNet2DConditionModel"}},
                            {"vae", {"diffusers", "AutoencoderKL"}}};
    // Swap the components in one by one (each rename is atomic); model_index.json goes last.
    for (const char* c : {"unet", "text_encoder", "tokenizer", "vae", "scheduler"}) {
      remove_tree(out + "/" + c);
      fs::rename(tmp + "/" + c, out + "/" + c);
    }
    remove_tree(tmp);
    write_file_atomically(out + "/model_index.json", index.dump(2) + "\n");
  };
  auto write_grid = [&](int64_t step) {
    auto pipe = ema_pipeline();
    const int per_row = 4;
    std::vector<torch::Tensor> rows;
    for (const auto& prompt : prompts) {
      SDOptions g;
      g.prompt = prompt;
      g.n = per_row;
      g.batch_size = per_row;
      g.guidance = 3.0;
      g.steps = 25;
      g.sampler = "euler";
      g.seed = 1000;
      g.width = g.height = co.resolution;
      rows.push_back(generate(pipe, g).samples);
    }
    auto grid = make_grid(torch::cat(rows).clamp(-1, 1), per_row, 2, 1.0);
    std::string text = "training samples at step " + std::to_string(step) + ", rows:";
    for (const auto& p : prompts) text += "\n" + p;
    char name[64];
    std::snprintf(name, sizeof name, "/samples/step_%07lld.png", static_cast<long long>(step));
    for (const std::string& path : {out + name, out + "/samples/latest.png"})
      write_png(path, to_image(grid), {{"parameters", text}});
  };

  LoopState state;
  double smooth = NAN;
  if (resumed) {
    load_checkpoint(ckpt_dir, *resumed, *model, *ema, optimizer);
    state.step = resumed->step;
    state.trained_seconds = resumed->seconds;
    smooth = resumed->smooth_loss;
    if (state.step > to.steps)
      throw Error(ckpt_dir + ": already at step " + std::to_string(state.step) + " (raise --steps to train further)");
  }
  // Identical weights on every rank: rank 0's (a fresh run's initialisation, or its checkpoint).
  if (dist) {
    std::vector<torch::Tensor> state_tensors = model->parameters();
    for (auto& p : ema->parameters()) state_tensors.push_back(p);
    dist->broadcast(state_tensors, "the initial weights");
  }
  if (is_main) start_run_files(out, opts_now, "step,loss,lr,img_per_s,elapsed_s", !resumed);
  if (!quiet) {
    int64_t n = 0;
    for (auto& p : params) n += p.numel();
    std::fprintf(stderr,
                 "diffuse train (text-to-image): %lld captioned images in %zu buckets, latents of %s | "
                 "UNet2DConditionModel + %s text encoder (%lld tokens), %.2fM trained parameters | %s | %s\n",
                 static_cast<long long>(data.size()), data.buckets.size(), to.latent.c_str(),
                 text_cfg ? opt.text_encoder.c_str() : "frozen", static_cast<long long>(tokenizer.vocab_size()),
                 static_cast<double>(n) / 1e6, device.str().c_str(), runtime_summary().c_str());
    print_run_layout(to.batch, dist, 0, resumed.has_value(), state.step);
  }
  auto save_all = [&] {
    save_checkpoint(ckpt_dir, CheckpointState{state.step, smooth, state.trained_seconds, opts_now}, *model, *ema,
                    optimizer);
    save_pipeline();
  };

  const DiffusionObjective objective(alphas_cumprod, {to.prediction, 0.0, -1, false, to.min_snr_gamma});
  // Data parallel: every rank makes the global batch of the step (batch x processes) and its random
  // draws, and trains its share of the rows; the shares' losses are weighted by their sizes, so
  // the averaged gradients are the global batch's.
  CaptionedLoader loader(data, to.batch * world, to.seed);
  NonFiniteGuard nonfinite(to.max_nonfinite_steps);
  GradientSync sync(to.dist, params);
  // As in train(): single-process bf16 runs compute Linear layers with AdamW-kept bf16 copies.
  std::optional<ComputeWeights> compute_weights;
  if (to.bf16 && !dist) compute_weights.emplace(*model, optimizer);
  double lr = 0;
  LoopCallbacks cb;
  cb.step = [&](int64_t step) {
    lr = scheduled_lr(to.lr, step, to.warmup, to.lr_schedule, to.steps);
    optimizer.zero_grad();
    CaptionedBatch b = loader.make(step);
    auto gen = at::detail::createCPUGenerator(mix_seed(to.seed, static_cast<uint64_t>(step)));
    const auto& [mean_all, std_all] = latents[static_cast<size_t>(b.bucket)];
    auto rows = torch::tensor(b.rows, torch::kInt64);
    auto mean = mean_all.index_select(0, rows), sd = std_all.index_select(0, rows);
    const int64_t B = mean.size(0), first = B * rank / world, last = B * (rank + 1) / world;
    auto x0 = (mean + sd * torch::randn(mean.sizes(), gen)).slice(0, first, last).to(device);
    const DiffusionDraw draw = objective.draw(x0, {}, gen, BatchSlice{first, B});
    std::vector<std::string> captions(b.captions.begin() + first, b.captions.begin() + last);
    if (opt.caption_dropout > 0) {
      auto drop = torch::rand({B}, gen);
      for (int64_t i = first; i < last; ++i)
        if (drop[i].item<double>() < opt.caption_dropout) captions[static_cast<size_t>(i - first)].clear();
    }
    double step_loss = 0;
    if (dist) sync.arm("gradients at step " + std::to_string(step + 1));
    if (last > first) {
      torch::Tensor pred_out;
      {
        nn::AutocastGuard autocast(device, to.bf16);
        auto ehs = encode_text(model, captions);
        pred_out = model->unet->forward(draw.xt, draw.t.to(torch::kFloat32), ehs).to(torch::kFloat32);
      }
      auto loss = objective.loss(pred_out, draw);
      if (dist) loss = loss * (static_cast<double>((last - first) * world) / static_cast<double>(B));
      loss.backward();
      if (compute_weights) compute_weights->gather_gradients();
      step_loss = loss.item<double>();
    }
    if (dist) {
      sync.finish("gradients at step " + std::to_string(step + 1));
      auto l = torch::tensor({step_loss}, torch::kFloat64);
      dist->all_reduce_mean({l}, "the loss at step " + std::to_string(step + 1));
      step_loss = l.item<double>();
    }
    if (nonfinite.ok(step_loss, params, step)) {
      optimizer.step(lr, to.grad_clip > 0 ? grad_norm(params, to.grad_clip).scale : 1.0);
      update_ema(ema->parameters(), model->parameters(), to.ema_decay, step);
      smooth = std::isnan(smooth) ? step_loss : 0.98 * smooth + 0.02 * step_loss;
    }
  };
  LossReport report;
  report.loss = &smooth;
  report.lr = &lr;
  set_loss_callbacks(cb, report);
  cb.save = save_all;
  cb.plots = [&] { write_t2i_loss_plot(out); };
  cb.sample = write_grid;
  LoopOptions lo;
  lo.label = "train";
  lo.out = out;
  lo.steps = to.steps;
  lo.save_every = to.save_every;
  lo.sample_every = to.sample_every;
  lo.images_per_step = static_cast<int64_t>(to.batch) * world;
  lo.quiet = to.quiet;
  lo.dist = dist;
  const LoopResult loop = run_training_loop(lo, state, cb);
  TrainResult result;
  result.interrupted = loop.interrupted;
  if (is_main && !loop.interrupted && !fs::exists(out + "/model_index.json")) save_pipeline();
  result.steps = state.step;
  result.final_loss = smooth;
  result.seconds = loop.seconds;
  return result;
}

std::pair<int64_t, int64_t> reduce_pipeline_vocabulary(const std::string& model, const std::string& data,
                                                       const std::string& out, const std::string& caption_ext) {
  for (const char* c : {"text_encoder/config.json", "tokenizer/vocab.json", "model_index.json"})
    if (!fs::exists(model + "/" + c))
      throw Error("model " + model + ": not a StableDiffusionPipeline folder (" + model + "/" + c + " is missing)");
  if (fs::exists(out)) throw Error("out " + out + ": already exists");
  CaptionedOptions co;
  co.caption_ext = caption_ext;
  const CaptionedDataset d = load_captioned(data, co);
  const CLIPTokenizer tokenizer = CLIPTokenizer::from_folder(model + "/tokenizer");
  std::vector<int64_t> old_ids;
  const CLIPTokenizer small = tokenizer.reduced(d.captions, &old_ids);
  CLIPTextModel text = load_clip_text_model(model + "/text_encoder");
  if (text->config().vocab_size != tokenizer.vocab_size())
    throw Error("model " + model + ": the text encoder has " + std::to_string(text->config().vocab_size) +
                " token embeddings but the tokenizer " + std::to_string(tokenizer.vocab_size()) + " tokens");
  text->keep_token_embeddings(old_ids);
  const std::string tmp = out + ".tmp";
  remove_tree(tmp);
  fs::create_directories(tmp);
  for (const auto& e : fs::directory_iterator(model)) {
    const auto name = e.path().filename().string();
    if (name == "text_encoder" || name == "tokenizer" || name == "checkpoint" || name.front() == '.') continue;
    fs::copy(e.path(), tmp + "/" + name, fs::copy_options::recursive);
  }
  save_text_encoder(text, tmp + "/text_encoder");
  small.save(tmp + "/tokenizer");
  fs::rename(tmp, out);
  return {tokenizer.vocab_size(), small.vocab_size()};
}

}  // namespace diffuse
