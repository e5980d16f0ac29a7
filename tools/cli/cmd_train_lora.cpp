// diffuse train-lora: train a kohya-format LoRA on a Stable Diffusion 1.x / 2.x checkpoint.
#include <csignal>
#include <cstdio>
#include <memory>
#include <regex>

#include "commands.h"
#include "core/error.h"
#include "launch.h"
#include "train/distributed.h"
#include "train/lora_trainer.h"
#include "train/train_loop.h"

namespace cmd_train_lora {

extern "C" void on_sigint_lora(int) {
  if (diffuse::train_stop_flag()) std::_Exit(130);  // second Ctrl-C: stop now
  diffuse::train_stop_flag() = true;
}

// The option names of the library's errors -> this command's flags.
std::string as_flags(std::string message) {
  static const std::pair<const char*, const char*> kFlags[] = {{"text_encoder_lr", "--text-encoder-lr"},
                                                               {"prior_data", "--prior-data"},
                                                               {"prior_prompt", "--prior-prompt"},
                                                               {"prior_weight", "--prior-weight"},
                                                               {"ema_decay", "--ema"},
                                                               {"caption_ext", "--caption-ext"},
                                                               {"caption_dropout", "--caption-dropout"},
                                                               {"min_snr_gamma", "--min-snr-gamma"},
                                                               {"save_dtype", "--save-precision"},
                                                               {"save_every", "--save-every"},
                                                               {"lr_schedule", "--lr-schedule"},
                                                               {"unet_layers", "--layers"},
                                                               {"conv_rank", "--conv-rank"},
                                                               {"conv_alpha", "--conv-alpha"},
                                                               {"rank", "--rank"},
                                                               {"alpha", "--alpha"},
                                                               {"model", "--model"},
                                                               {"data", "--data"},
                                                               {"out", "--out"},
                                                               {"resolution", "--resolution"},
                                                               {"steps", "--steps"},
                                                               {"batch", "--batch"},
                                                               {"lr", "--lr"},
                                                               {"resume", "--resume"}};
  for (const auto& [field, flag] : kFlags)
    message = std::regex_replace(message, std::regex(std::string("(^|[ (])(--)?") + field + "(?= )"),
                                 std::string("$1") + flag);
  return message;
}

void register_cmd(CLI::App& app) {
  auto o = std::make_shared<diffuse::LoraTrainOptions>();
  auto threads = std::make_shared<int>(0);
  auto no_buckets = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand(
      "train-lora", "Train a LoRA (kohya format) on a Stable Diffusion 1.x / 2.x checkpoint from captioned images");
  cmd->add_option("--model", o->model, "Stable Diffusion pipeline folder or single-file .safetensors")->required();
  cmd->add_option("--data", o->data,
                  "Captioned images: a folder of IMAGE.png + IMAGE.txt (kohya; N_name subfolders repeat N times) "
                  "and/or metadata.jsonl (file_name, text), or emoji-captions")
      ->required();
  cmd->add_option("--out", o->out,
                  "The LoRA file (.safetensors); OUT-train/ beside it keeps the checkpoint, metrics.csv and loss.png "
                  "(--full: the pipeline folder, which keeps them itself)")
      ->required();
  cmd->add_option("--caption-ext", o->caption_ext, "Extension of the caption files")->capture_default_str();
  cmd->add_option("--resolution", o->resolution,
                  "Training side in pixels: aspect-ratio buckets have about this area (0 = the model's default size)")
      ->capture_default_str();
  cmd->add_flag("--no-buckets", *no_buckets, "Resize and centre-crop every image to a square instead of bucketing");
  cmd->add_option("--rank", o->network.rank, "LoRA rank (network_dim)")->capture_default_str();
  cmd->add_option("--alpha", o->network.alpha, "LoRA alpha (scale alpha / rank)")->capture_default_str();
  cmd->add_option("--layers", o->network.unet_layers,
                  "UNet layers: attention (to_q, to_k, to_v, to_out.0) or transformer (also proj_in/out and the "
                  "feed-forward, kohya's default)")
      ->capture_default_str()
      ->check(CLI::IsMember({"attention", "transformer"}));
  cmd->add_flag("--conv", o->network.conv, "Also the resnet and sampler layers (LoCon; 3x3 convolutions)");
  cmd->add_option("--conv-rank", o->network.conv_rank, "Rank of the 3x3 convolutions (0 = --rank)");
  cmd->add_option("--conv-alpha", o->network.conv_alpha, "Alpha of the 3x3 convolutions (0 = --alpha)");
  cmd->add_option("--lr", o->lr, "Learning rate of the UNet LoRA (AdamW)")->capture_default_str();
  cmd->add_option("--text-encoder-lr", o->text_encoder_lr, "> 0: also train LoRA on the text encoder at this rate")
      ->capture_default_str();
  cmd->add_option("--lr-schedule", o->lr_schedule, "constant or cosine, after linear warm-up")->capture_default_str();
  cmd->add_option("--warmup", o->warmup, "Warm-up steps")->capture_default_str();
  cmd->add_option("--weight-decay", o->weight_decay, "AdamW weight decay")->capture_default_str();
  cmd->add_option("--grad-clip", o->grad_clip, "Clip the gradient norm (0 = off)")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Optimizer steps in total")->capture_default_str();
  cmd->add_option("--batch", o->batch,
                  "Batch size per process (global batch: x processes; a batch comes from one bucket)")
      ->capture_default_str();
  cmd->add_option("--min-snr-gamma", o->min_snr_gamma, "Min-SNR loss weighting gamma (0 = off)")->capture_default_str();
  cmd->add_option("--caption-dropout", o->caption_dropout, "Probability of an empty caption (for CFG)")
      ->capture_default_str();
  cmd->add_flag("--bf16", o->bf16, "Base weights in bf16 and the forward pass under bf16 autocast (LoRA stays fp32)");
  cmd->add_option("--save-precision", o->save_dtype, "dtype of the saved LoRA: fp16, bf16 or fp32")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp16", "bf16", "fp32"}));
  cmd->add_option("--seed", o->seed, "Seed for the LoRA initialisation, data order and noise")->capture_default_str();
  cmd->add_option("--save-every", o->save_every, "Checkpoint and LoRA file every N steps (and at the end / on Ctrl-C)")
      ->capture_default_str();
  cmd->add_option("--sample-every", o->sample_every,
                  "Write a sample grid (OUT-train/samples/) every N steps with the LoRA applied (0 = never)")
      ->capture_default_str();
  cmd->add_option("--sample-prompt", o->sample_prompts,
                  "A prompt of the sample grids (repeatable; default the first 4 captions)");
  cmd->add_option("--eval-images", o->eval_images,
                  "Images of the fixed-noise loss printed before and after training (0 = skip it)")
      ->capture_default_str();
  cmd->add_flag("--gradient-checkpointing", o->gradient_checkpointing,
                "Recompute the UNet's resnet and transformer activations in the backward pass (less memory, about "
                "one more forward pass of time)");
  cmd->add_option("--prior-data", o->prior_data,
                  "Prior preservation (DreamBooth): class images, a captioned folder or any image folder with "
                  "--prior-prompt; each step adds a batch of them");
  cmd->add_option("--prior-prompt", o->prior_prompt, "The caption of every --prior-data image (e.g. \"a dog\")");
  cmd->add_option("--prior-weight", o->prior_weight, "loss = loss_instance + W * loss_prior")->capture_default_str();
  cmd->add_flag("--full", o->full,
                "Fine-tune every UNet parameter instead of a LoRA (text encoder frozen); --out is then a "
                "StableDiffusionPipeline folder");
  cmd->add_option("--ema", o->ema_decay, "--full: keep and save an EMA of the weights with this decay (0 = none)")
      ->capture_default_str();
  cmd->add_flag("--resume", o->resume, "Continue the run of --out from its checkpoint");
  cmd->add_option("--device", o->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_flag("--quiet", o->quiet, "No progress output");
  diffuse::cli::add_threads_option(cmd, threads.get());
  auto dist = std::make_shared<diffuse::cli::DistFlags>();
  diffuse::cli::add_dist_options(cmd, dist.get());
  cmd->callback([o, threads, no_buckets, dist] {
    if (diffuse::cli::launch_local(*dist, *threads)) return;
    diffuse::cli::apply_threads(*threads);
    o->dist = diffuse::cli::join_job(*dist, o->device);
    o->buckets = !*no_buckets;
    std::signal(SIGINT, on_sigint_lora);
    std::signal(SIGTERM, on_sigint_lora);
    diffuse::LoraTrainResult r;
    try {
      r = diffuse::train_lora(*o);
    } catch (const diffuse::Error& e) {
      throw diffuse::Error(as_flags(e.what()));
    }
    std::signal(SIGINT, SIG_DFL);
    if (o->dist && !o->dist->main()) {
      if (r.interrupted) throw CLI::RuntimeError(130);
      return;
    }
    const std::string what =
        o->full ? "full UNet"
                : std::to_string(r.unet_layers) + " UNet + " + std::to_string(r.text_layers) + " text-encoder layers";
    char parts[96] = "";
    if (!o->prior_data.empty())
      std::snprintf(parts, sizeof parts, " (instance %.5f, prior %.5f)", r.final_loss_instance, r.final_loss_prior);
    std::printf("%s: %lld steps, %s, loss %.5f%s; fixed-noise loss of the data %.5f -> %.5f, %.1f s%s\n",
                o->out.c_str(), static_cast<long long>(r.steps), what.c_str(), r.final_loss, parts, r.eval_loss_before,
                r.eval_loss_after, r.seconds, r.interrupted ? " (interrupted; continue with --resume)" : "");
    if (r.interrupted) throw CLI::RuntimeError(130);
  });
}

DIFFUSE_COMMAND(12, "train-lora", register_cmd);

}  // namespace cmd_train_lora
