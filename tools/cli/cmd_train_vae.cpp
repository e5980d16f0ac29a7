// diffuse train-vae: train a diffusers AutoencoderKL (the latent-diffusion VAE).
#include <csignal>
#include <cstdio>
#include <memory>

#include "commands.h"
#include "core/error.h"
#include "core/runtime.h"
#include "eval/perceptual.h"
#include "launch.h"
#include "train/distributed.h"
#include "train/trainer.h"
#include "train/vae_trainer.h"

namespace cmd_train_vae {

extern "C" void on_vae_sigint(int) {
  if (diffuse::train_stop_flag()) std::_Exit(130);  // second Ctrl-C: stop now
  diffuse::train_stop_flag() = true;
}

void register_cmd(CLI::App& app) {
  auto o = std::make_shared<diffuse::VaeTrainOptions>();
  auto threads = std::make_shared<int>(0);
  auto dist = std::make_shared<diffuse::cli::DistFlags>();
  auto perceptual = std::make_shared<std::string>();
  std::string presets;
  for (const auto& [n, d] : diffuse::vae_presets()) presets += "\n    " + n + ": " + d;
  auto* cmd = app.add_subcommand("train-vae", "Train an AutoencoderKL (VAE for latent diffusion)");
  cmd->add_option("--data", o->data, "emoji, fashion-mnist, mnist, a folder of IDX files, or an image folder")
      ->required();
  cmd->add_option("--out", o->out, "Output folder: a diffusers AutoencoderKL folder + checkpoint + metrics")
      ->required();
  cmd->add_option("--config", o->config, "VAE preset or an AutoencoderKL config.json. Presets:" + presets)
      ->capture_default_str();
  cmd->add_option("--image-size", o->image_size, "Training resolution (0 = the data's own; emoji: 64)")
      ->capture_default_str();
  cmd->add_option("--channels", o->channels, "Image channels (0 = the data's own)")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Optimizer steps in total")->capture_default_str();
  cmd->add_option("--batch", o->batch, "Batch size per process (global batch: x processes)")->capture_default_str();
  cmd->add_option("--lr", o->lr, "Peak learning rate (AdamW, betas 0.5/0.9 as in LDM)")->capture_default_str();
  cmd->add_option("--lr-schedule", o->lr_schedule, "constant or cosine, after linear warm-up")->capture_default_str();
  cmd->add_option("--warmup", o->warmup, "Warm-up steps")->capture_default_str();
  cmd->add_option("--weight-decay", o->weight_decay, "AdamW weight decay")->capture_default_str();
  cmd->add_option("--grad-clip", o->grad_clip, "Clip the gradient norm (0 = off)")->capture_default_str();
  cmd->add_option("--max-nan-steps", o->max_nonfinite_steps,
                  "Steps with NaN / Inf loss or gradients skipped in a row before the run stops")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--ema", o->ema_decay, "EMA decay of the saved weights (0 = no EMA)")->capture_default_str();
  cmd->add_option("--recon-loss", o->recon_loss, "l1 or l2")->capture_default_str();
  cmd->add_option("--kl-weight", o->kl_weight, "beta of the KL term (relative to per-pixel sums, as in LDM)")
      ->capture_default_str();
  cmd->add_option("--disc-weight", o->disc_weight, "PatchGAN hinge loss weight (0 = no discriminator; LDM: 0.5)")
      ->capture_default_str();
  cmd->add_option("--disc-start", o->disc_start, "First step with the adversarial loss")->capture_default_str();
  cmd->add_flag("!--no-disc-adaptive", o->disc_adaptive, "Use --disc-weight as is (no LDM adaptive weight)");
  cmd->add_option("--disc-channels", o->disc_channels, "Discriminator base width (ndf)")->capture_default_str();
  cmd->add_option("--disc-lr", o->disc_lr, "Discriminator learning rate (0 = --lr)")->capture_default_str();
  cmd->add_option("--perceptual", *perceptual,
                  "Perceptual loss on a feature network of ours (a classifier folder, e.g. models/emoji-classifier): "
                  "LPIPS' unit-normalised stage activations, uniform weights")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--perceptual-weight", o->perceptual_weight,
                  "Weight of the perceptual loss against the per-pixel loss (default 1 with --perceptual, as in LDM)");
  cmd->add_option("--init", o->init, "Start from this AutoencoderKL folder (its config and weights)");
  cmd->add_flag("--freeze-encoder", o->freeze_encoder,
                "Train the decoder only (needs --init): the latents, and any denoiser trained on them, stay valid");
  cmd->add_flag("!--no-flip", o->flip, "Disable random horizontal flips");
  cmd->add_option("--seed", o->seed, "Seed for initialisation, data order and noise")->capture_default_str();
  cmd->add_option("--save-every", o->save_every, "Checkpoint every N steps (and at the end / on Ctrl-C)")
      ->capture_default_str();
  cmd->add_option("--sample-every", o->sample_every, "Write a reconstruction grid every N steps (0 = off)")
      ->capture_default_str();
  cmd->add_option("--scale-batches", o->scale_batches, "Batches whose latents set scaling_factor (1/std)")
      ->capture_default_str();
  cmd->add_option("--eval-images", o->eval_images, "Held-out images for the final PSNR (at most)")
      ->capture_default_str();
  cmd->add_flag("--resume", o->resume, "Continue the run in --out from its checkpoint");
  cmd->add_option("--device", o->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_flag("--quiet", o->quiet, "No progress output");
  diffuse::cli::add_threads_option(cmd, threads.get());
  diffuse::cli::add_dist_options(cmd, dist.get());
  cmd->add_option("--batch-log", o->batch_log,
                  "Append the dataset rows of every batch to this file (one line per batch; with several processes "
                  "FILE.rank<N>), e.g. to compare data orders");
  cmd->callback([o, threads, perceptual, cmd, dist] {
    if (diffuse::cli::launch_local(*dist, *threads)) return;
    diffuse::cli::apply_threads(*threads);
    o->dist = diffuse::cli::join_job(*dist, o->device);
    if (!perceptual->empty()) {
      if (cmd->count("--perceptual-weight") == 0) o->perceptual_weight = 1.0;
      auto dist = std::make_shared<diffuse::PerceptualDistance>(
          diffuse::PerceptualDistance::load(*perceptual, diffuse::parse_device(o->device)));
      o->perceptual_source = *perceptual;
      o->perceptual = [dist](const torch::Tensor& rec, const torch::Tensor& ref) { return (*dist)(rec, ref); };
    } else if (o->perceptual_weight > 0) {
      throw diffuse::Error("--perceptual-weight needs --perceptual DIR (a feature network folder)");
    }
    std::signal(SIGINT, on_vae_sigint);
    std::signal(SIGTERM, on_vae_sigint);
    auto r = diffuse::train_vae(*o);
    std::signal(SIGINT, SIG_DFL);
    if (o->dist && !o->dist->main()) {
      if (r.interrupted) throw CLI::RuntimeError(130);
      return;
    }
    if (r.interrupted) {
      std::printf("%s: %lld steps, training PSNR %.2f dB (interrupted; continue with --resume)\n", o->out.c_str(),
                  static_cast<long long>(r.steps), r.train_psnr);
      throw CLI::RuntimeError(130);
    }
    std::printf("%s: %lld steps, held-out PSNR %.2f dB (%lld images), scaling_factor %.5f, %.1f s\n", o->out.c_str(),
                static_cast<long long>(r.steps), r.heldout_psnr, static_cast<long long>(r.heldout_images),
                r.scaling_factor, r.seconds);
  });
}

DIFFUSE_COMMAND(11, "train-vae", register_cmd);

}  // namespace cmd_train_vae
