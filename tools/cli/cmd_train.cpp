// diffuse train: train a diffusion model (UNet or DiT, pixel or latent space).
#include <csignal>
#include <cstdio>
#include <memory>

#include "commands.h"
#include "core/error.h"
#include "eval/evaluate.h"
#include "launch.h"
#include "train/distributed.h"
#include "train/presets.h"
#include "train/text_to_image.h"
#include "train/trainer.h"

namespace cmd_train {

extern "C" void on_sigint(int) {
  if (diffuse::train_stop_flag()) std::_Exit(130);  // second Ctrl-C: stop now
  diffuse::train_stop_flag() = true;
}

void register_cmd(CLI::App& app) {
  auto t2i = std::make_shared<diffuse::TextToImageOptions>();
  auto o = std::shared_ptr<diffuse::TrainOptions>(t2i, &t2i->train);
  auto threads = std::make_shared<int>(0);
  auto dist = std::make_shared<diffuse::cli::DistFlags>();
  auto eval_classifier = std::make_shared<std::string>();
  std::string presets;
  for (const auto& [n, d] : diffuse::unet_presets()) presets += "\n    " + n + ": " + d;
  for (const auto& [n, d] : diffuse::dit_presets()) presets += "\n    " + n + ": " + d;
  auto* cmd = app.add_subcommand("train", "Train a diffusion model (UNet2DModel or DiT; pixels or VAE latents)");
  cmd->add_option("--data", o->data,
                  "fashion-mnist, mnist, a folder of IDX files, or an image folder (class = subfolder)")
      ->required();
  cmd->add_option("--out", o->out, "Output folder (diffusers pipeline + checkpoint + metrics)")->required();
  cmd->add_option("--config", o->config,
                  "Preset or a UNet2DModel / DiTTransformer2DModel config.json. Presets:" + presets)
      ->capture_default_str();
  cmd->add_option("--latent", o->latent,
                  "AutoencoderKL folder: train on its latents (encoded once, sampled per item) and save a latent "
                  "pipeline (DiTPipeline for a DiT)");
  cmd->add_option("--task", o->task,
                  "generate, or superres: a super-resolution UNet conditioned on the image downsampled by --scale "
                  "(area) and upsampled back (bicubic); use it with `diffuse upscale`")
      ->capture_default_str()
      ->check(CLI::IsMember({"generate", "superres"}));
  cmd->add_option("--scale", o->scale, "--task superres: the upscaling factor (2 or 4; divides the image size)")
      ->capture_default_str()
      ->check(CLI::Range(2, 8));
  cmd->add_option("--init", o->init,
                  "Fine-tune: start from this pipeline (or UNet/DiT) folder; its network config replaces --config, "
                  "and --prediction, --beta-schedule and the classes must match it")
      ->check(CLI::ExistingDirectory);
  std::string te_presets;
  for (const auto& [n, d] : diffuse::text_encoder_presets()) te_presets += "\n    " + n + ": " + d;
  auto* te_opt = cmd->add_option(
      "--text-encoder", t2i->text_encoder,
      "Text-to-image from captioned --data (IMAGE.png + IMAGE.txt, metadata.jsonl, emoji-captions): a "
      "UNet2DConditionModel (--config t2i-tiny, t2i-small or a config.json) on --latent VAE latents, with "
      "a CLIP text encoder trained from scratch (a preset) or frozen (a CLIPTextModel or SD pipeline "
      "folder); writes a StableDiffusionPipeline folder. Presets:" +
          te_presets);
  cmd->add_option("--vocab", t2i->vocabulary,
                  "Text-to-image with a preset text encoder: captions (the CLIP tokens the training captions use, "
                  "plus the 512 byte symbols; the default for a new run) or clip (all 49,408); --resume keeps the "
                  "run's")
      ->check(CLI::IsMember({"captions", "clip"}));
  cmd->add_option("--caption-ext", t2i->caption_ext, "Text-to-image: extension of the caption files")
      ->capture_default_str();
  cmd->add_option("--caption-dropout", t2i->caption_dropout,
                  "Text-to-image: probability of training a caption as \"\" (for classifier-free guidance)")
      ->capture_default_str();
  cmd->add_option("--sample-prompt", t2i->sample_prompts,
                  "Text-to-image: a prompt of the sample grids (repeatable; default the first 8 captions)");
  cmd->add_option("--image-size", o->image_size, "Training resolution (0 = the data's own)")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Optimizer steps in total")->capture_default_str();
  cmd->add_option("--batch", o->batch, "Batch size per process (global batch: x processes x --grad-accum)")
      ->capture_default_str();
  cmd->add_option("--grad-accum", o->grad_accum, "Batches accumulated per optimizer step")->capture_default_str();
  cmd->add_option("--lr", o->lr, "Peak learning rate (AdamW)")->capture_default_str();
  cmd->add_option("--lr-schedule", o->lr_schedule, "constant or cosine, after linear warm-up")->capture_default_str();
  cmd->add_option("--warmup", o->warmup, "Warm-up steps")->capture_default_str();
  cmd->add_option("--weight-decay", o->weight_decay, "AdamW weight decay")->capture_default_str();
  cmd->add_option("--grad-clip", o->grad_clip, "Clip the gradient norm (0 = off)")->capture_default_str();
  cmd->add_option("--max-nan-steps", o->max_nonfinite_steps,
                  "Steps with NaN / Inf loss or gradients skipped in a row before the run stops")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--ema", o->ema_decay, "EMA decay of the saved weights")->capture_default_str();
  cmd->add_option("--class-dropout", o->class_dropout, "Probability of training on the null class (for CFG)")
      ->capture_default_str();
  cmd->add_option("--prediction", o->prediction, "epsilon, v_prediction or sample")->capture_default_str();
  cmd->add_option("--beta-schedule", o->beta_schedule, "linear, scaled_linear or squaredcos_cap_v2")
      ->capture_default_str();
  cmd->add_option("--min-snr-gamma", o->min_snr_gamma, "Min-SNR loss weighting gamma (0 = off; 5 is typical)")
      ->capture_default_str();
  cmd->add_flag("--bf16", o->bf16, "bf16 autocast for the forward pass (weights and optimizer stay fp32)");
  cmd->add_flag("--flip,!--no-flip", o->flip,
                "Random horizontal flips (off by default: Fashion-MNIST's shoes and most text face one way)");
  cmd->add_option("--seed", o->seed, "Seed for initialisation, data order and noise")->capture_default_str();
  cmd->add_option("--save-every", o->save_every, "Checkpoint every N steps (and at the end / on Ctrl-C)")
      ->capture_default_str();
  cmd->add_option("--sample-every", o->sample_every, "Write a sample grid every N steps (0 = off)")
      ->capture_default_str();
  cmd->add_option("--eval-every", o->eval_every, "Track FID every N steps (needs --eval-classifier)")
      ->capture_default_str();
  cmd->add_option("--eval-classifier", *eval_classifier,
                  "Feature network folder for --eval-every (default: the shipped fashion-mnist one)");
  cmd->add_flag("--resume", o->resume, "Continue the run in --out from its checkpoint");
  cmd->add_option("--device", o->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_flag("--quiet", o->quiet, "No progress output");
  diffuse::cli::add_threads_option(cmd, threads.get());
  diffuse::cli::add_dist_options(cmd, dist.get());
  cmd->add_option("--batch-log", o->batch_log,
                  "Append the dataset rows of every batch to this file (one line per batch; with several processes "
                  "FILE.rank<N>), e.g. to compare data orders");
  cmd->callback([o, t2i, te_opt, threads, eval_classifier, dist] {
    if (diffuse::cli::launch_local(*dist, *threads)) return;
    diffuse::cli::apply_threads(*threads);
    o->dist = diffuse::cli::join_job(*dist, o->device);
    if (o->eval_every > 0) o->evaluate = diffuse::train_fid_evaluator(*eval_classifier, 1000);
    std::signal(SIGINT, on_sigint);
    std::signal(SIGTERM, on_sigint);
    auto r = te_opt->count() > 0 ? diffuse::train_text_to_image(*t2i) : diffuse::train(*o);
    std::signal(SIGINT, SIG_DFL);
    if (o->dist && !o->dist->main()) {
      if (r.interrupted) throw CLI::RuntimeError(130);
      return;
    }
    std::printf("%s: %lld steps, loss %.5f, %.1f s%s\n", o->out.c_str(), static_cast<long long>(r.steps), r.final_loss,
                r.seconds, r.interrupted ? " (interrupted; continue with --resume)" : "");
    if (r.interrupted) throw CLI::RuntimeError(130);
  });
}

DIFFUSE_COMMAND(10, "train", register_cmd);

}  // namespace cmd_train
