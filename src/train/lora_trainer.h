#pragma once
// `diffuse train-lora`: trains a LoRA (train/lora_network.h) on a Stable Diffusion 1.x / 2.x
// checkpoint (pipeline folder or single file) from a captioned dataset (train/captioned.h) and
// writes it as a kohya-format .safetensors file, with kohya's training metadata (ss_*) in its
// __metadata__, that `--lora` here, A1111 and ComfyUI load. The base weights stay frozen.
// Beside the output, `<stem>-train/` holds checkpoint/ (bit-exact resume, also on Ctrl-C),
// metrics.csv, loss.png and samples/.
//
// Options: gradient checkpointing of the UNet's resnets and transformers (nn/checkpoint.h);
// DreamBooth prior preservation (each step also trains a batch of class images, loss =
// loss_instance + prior_weight * loss_prior, as diffusers' train_dreambooth_lora); and `full`
// fine-tuning of every UNet parameter (text encoder frozen, optional EMA) into a diffusers
// StableDiffusionPipeline folder `out` that also holds checkpoint/, metrics.csv and loss.png.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "train/lora_network.h"

namespace diffuse {

class Distributed;

struct LoraTrainOptions {
  std::string model;  // SD pipeline folder or single-file .safetensors
  std::string data;   // captioned dataset (load_captioned)
  std::string out;    // the LoRA file (.safetensors); with `full` the pipeline folder
  std::string caption_ext = ".txt";
  int resolution = 0;  // bucket target side in pixels; 0 = the model's default size
  bool buckets = true;
  LoraNetworkOptions network;  // rank, alpha, layers, conv (text_encoder follows text_encoder_lr)
  double lr = 1e-4;            // UNet LoRA learning rate (AdamW)
  double text_encoder_lr = 0;  // > 0 also trains LoRA on the text encoder at this rate
  std::string lr_schedule = "constant";
  int64_t warmup = 0;
  double weight_decay = 0.0;
  double grad_clip = 1.0;  // 0 = off
  int64_t steps = 1000;
  int batch = 1;
  double min_snr_gamma = 5.0;       // 0 = plain MSE
  double caption_dropout = 0;       // probability of training a caption as "" (for CFG)
  bool bf16 = false;                // base weights stored as bf16 and the forward pass under bf16 autocast
  std::string save_dtype = "fp16";  // fp16 | bf16 | fp32: dtype of the saved LoRA tensors
  uint64_t seed = 0;
  int64_t save_every = 500;  // checkpoint and LoRA file every N steps (and at the end / on Ctrl-C)
  // Sample grids (OUT-train/samples/step_NNNNNNN.png): every N steps (0 = never), one row of 4
  // seeds per prompt, with the adapters applied (empty prompts = the first 4 distinct captions).
  int64_t sample_every = 0;
  std::vector<std::string> sample_prompts;
  // Recompute the UNet blocks' activations in the backward pass instead of storing them.
  bool gradient_checkpointing = false;
  // Prior preservation: class images (a captioned folder, or any image folder with prior_prompt as
  // every image's caption), one batch of `batch` of them per step, weighted by prior_weight.
  std::string prior_data;
  std::string prior_prompt;
  double prior_weight = 1.0;
  // Full fine-tuning of the UNet instead of LoRA (network options unused); ema_decay > 0 keeps an
  // EMA of the weights and saves it.
  bool full = false;
  double ema_decay = 0;
  bool resume = false;
  // Data parallel (train/distributed.h): `batch` is per process; every process trains its share of
  // the global batch (batch x processes) and rank 0 writes the files. Null: one process.
  std::shared_ptr<Distributed> dist;
  std::string device = "auto";
  bool quiet = false;
  int max_nonfinite_steps = 10;
  int eval_images = 16;  // images of the fixed-noise loss before and after training (0 = none)
};

struct LoraTrainResult {
  int64_t steps = 0;
  double final_loss = 0;  // smoothed training loss (with prior data: instance + weight * prior)
  double final_loss_instance = NAN, final_loss_prior = NAN;  // with prior data: the smoothed parts
  // Loss over the training images at fixed timesteps and noise (the first eval_images images, 4
  // timesteps spread over the schedule), without and with the adapter: what training lowered
  // (NaN with eval_images 0).
  double eval_loss_before = 0, eval_loss_after = 0;
  int64_t images = 0, prior_images = 0;
  // How the frozen UNet weights were held while training: "fp32", "bf16" (--bf16), or "fp16" /
  // "bf16 computed in fp32" when a 16-bit base stays 16-bit under gradient checkpointing.
  std::string base_weights;
  int unet_layers = 0, text_layers = 0;
  int64_t parameters = 0;  // trainable
  double seconds = 0;
  bool interrupted = false;
};

// The folder beside `out` holding the checkpoint and metrics: "<out without .safetensors>-train".
std::string lora_train_dir(const std::string& out);
// Where a run keeps its checkpoint and metrics: lora_train_dir(out), or `out` itself with `full`.
std::string lora_run_dir(const LoraTrainOptions& opt);

LoraTrainResult train_lora(const LoraTrainOptions& opt);

}  // namespace diffuse
