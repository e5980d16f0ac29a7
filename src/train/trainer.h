#pragma once
// `diffuse train`: trains a diffusion model (UNet2DModel or DiTTransformer2DModel), in pixel
// space or in the latent space of a given AutoencoderKL, and writes a diffusers pipeline folder
// (EMA weights), checkpoints, metrics.csv, loss.png and sample grids.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "train/train_loop.h"

namespace diffuse {

struct TrainOptions {
  std::string data;              // dataset spec (see load_dataset)
  std::string out;               // output folder
  std::string config = "small";  // preset name (UNet or DiT-*/*) or a UNet2DModel / DiT config.json
  std::string latent;            // AutoencoderKL folder: train on its latents ("" = pixel space)
  // "generate", or "superres": the UNet also sees the image downsampled by `scale` (area) and
  // upsampled back (bicubic) as extra input channels, and the folder gets a superres.json
  // (see pipelines/superres.h). Super-resolution models are unconditional pixel UNets.
  std::string task = "generate";
  int scale = 2;       // superres: the upscaling factor (the image size must be divisible by it)
  std::string init;    // fine-tune: start from this pipeline (or UNet/DiT) folder's network
                       // (its config replaces `config`; prediction, schedule and classes must match)
  int image_size = 0;  // 0 = the dataset's own size
  int64_t steps = 10000;
  int batch = 64;
  int grad_accum = 1;  // micro-batches per optimizer step
  double lr = 2e-4;
  std::string lr_schedule = "constant";  // constant | cosine (both after linear warm-up)
  int64_t warmup = 500;
  double weight_decay = 0.0;
  double grad_clip = 1.0;        // 0 = off
  int max_nonfinite_steps = 10;  // NaN / Inf steps skipped in a row before the run stops
  double ema_decay = 0.9995;
  double class_dropout = 0.1;          // probability of the null class (for CFG)
  std::string prediction = "epsilon";  // epsilon | v_prediction | sample
  std::string beta_schedule = "squaredcos_cap_v2";
  int num_train_timesteps = 1000;
  double min_snr_gamma = 0.0;  // 0 = plain MSE
  bool flip = false;           // random horizontal flips: off, since many datasets have an orientation
  bool bf16 = false;
  uint64_t seed = 0;
  int64_t save_every = 1000;
  int64_t sample_every = 1000;
  // Evaluation during training, every eval_every steps (0 = off) and at the end: `evaluate` gets
  // the pipeline folder just written and returns a metric (e.g. FID), logged in metrics.csv's fid
  // column and plotted in fid.png. Supplied by the caller (the CLI passes FID on a feature network),
  // so training needs no evaluation code of its own.
  int64_t eval_every = 0;
  std::function<double(const std::string& pipeline_dir)> evaluate;
  bool resume = false;
  std::string device = "auto";
  bool quiet = false;
  // Data-parallel job (train/distributed.h); null: this process alone. `batch` is per process:
  // an optimizer step sees batch x processes x grad_accum images, and resuming needs the same
  // global batch (batch x processes), with any number of processes.
  std::shared_ptr<Distributed> dist;
  // Appends one line per micro-batch to this file: the global micro-batch number and the dataset
  // rows this process trains on (with several processes, each writes FILE.rank<N>). "" = off.
  std::string batch_log;
};

struct TrainResult {
  int64_t steps = 0;         // optimizer steps completed
  double final_loss = 0;     // smoothed loss at the end
  double seconds = 0;        // wall time of this run
  bool interrupted = false;  // stopped by request (Ctrl-C); a checkpoint was written
};

TrainResult train(const TrainOptions& opt);

}  // namespace diffuse
