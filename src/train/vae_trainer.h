#pragma once
// `diffuse train-vae`: trains a diffusers AutoencoderKL with the latent-diffusion recipe:
// reconstruction (L1 or L2) + beta * KL, optionally a PatchGAN discriminator with a hinge loss
// after --disc-start steps (adaptive weight as in LDM), optionally a perceptual loss on a feature
// network supplied by the caller. It can start from an existing VAE and train its decoder only
// (the encoder, and so the latents a denoiser was trained on, stay bit for bit). Writes an AutoencoderKL folder
// (config.json with the data's scaling_factor + diffusion_pytorch_model.safetensors), checkpoints (--resume continues
// bit for bit), metrics.csv, loss.png, reconstruction grids and metrics.json.
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "models/autoencoder_kl.h"
#include "train/dataset.h"
#include "train/train_loop.h"

namespace diffuse {

struct VaeTrainOptions {
  std::string data;             // dataset spec (see load_dataset): emoji, fashion-mnist, an image folder...
  std::string out;              // output folder (an AutoencoderKL folder plus the run's files)
  std::string config = "tiny";  // preset (see vae_presets) or an AutoencoderKL config.json
  int image_size = 0;           // 0 = the dataset's own size (emoji: 64)
  int channels = 0;             // 0 = the dataset's own channel count
  int64_t steps = 5000;
  int batch = 16;
  double lr = 1e-4;
  std::string lr_schedule = "constant";  // constant | cosine, after linear warm-up
  int64_t warmup = 100;
  double weight_decay = 0.0;
  double grad_clip = 1.0;         // 0 = off
  int max_nonfinite_steps = 10;   // NaN / Inf steps skipped in a row before the run stops
  double ema_decay = 0.0;         // 0 = no EMA (the saved weights are the trained ones)
  std::string recon_loss = "l1";  // l1 | l2
  double kl_weight = 1e-6;        // beta, relative to per-pixel sums as in LDM
  double disc_weight = 0.0;       // 0 = no discriminator; LDM uses 0.5
  int64_t disc_start = 5000;      // first step with the adversarial loss
  bool disc_adaptive = true;      // LDM's adaptive weight (gradient-norm ratio at the decoder's last layer)
  int disc_channels = 64;         // ndf
  double disc_lr = 0.0;           // 0 = --lr
  // Perceptual loss: perceptual_weight * the batch mean of perceptual(reconstruction, input), both
  // [B, C, H, W] in [-1, 1] -> [B], differentiable in the reconstruction. Supplied by the caller
  // (the CLI passes eval's PerceptualDistance), so training needs no feature network of its own.
  std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)> perceptual;
  double perceptual_weight = 0.0;  // 0 = off; LDM weighs LPIPS 1.0 against the per-pixel L1
  std::string perceptual_source;   // what `perceptual` is (recorded in train_config.json)
  std::string init;                // start from this AutoencoderKL folder (its config.json and weights)
  bool freeze_encoder = false;     // train the decoder only (needs `init`); scaling_factor is kept
  bool flip = true;
  uint64_t seed = 0;
  int64_t save_every = 1000;
  int64_t sample_every = 500;
  int scale_batches = 8;   // batches whose latents set scaling_factor
  int eval_images = 1000;  // held-out images for the final PSNR (at most)
  bool resume = false;
  std::string device = "auto";
  bool quiet = false;
  // Data-parallel job (train/distributed.h); null: this process alone. `batch` is per process
  // (the global batch, batch x processes, must stay the same across resumes); scaling_factor is
  // measured on batches of the global size. The discriminator's batch norms normalise each
  // process's batch (as DDP without SyncBatchNorm); their running statistics are rank 0's.
  std::shared_ptr<Distributed> dist;
  std::string batch_log;  // as TrainOptions::batch_log
};

struct VaeTrainResult {
  int64_t steps = 0;
  double final_loss = 0;       // smoothed total loss
  double train_psnr = 0;       // smoothed PSNR of training reconstructions (dB)
  double heldout_psnr = 0;     // mean per-image PSNR on held-out images, posterior mean (dB)
  int64_t heldout_images = 0;  // 0 when the data has no held-out split (PSNR then on training images)
  double scaling_factor = 0;   // 1 / std of sampled latents (the initial VAE's with freeze_encoder)
  double seconds = 0;
  bool interrupted = false;
};

VaeTrainResult train_vae(const VaeTrainOptions& opt);

// An AutoencoderKL config.json for preset `name` with `channels` image channels.
nlohmann::json vae_preset(const std::string& name, int channels, int image_size);
const std::vector<std::pair<std::string, std::string>>& vae_presets();  // name, description

// 1 / std of latents sampled from the posterior of `batches` batches of `data` (fixed order and
// noise from `seed`), as diffusers' scaling_factor. float32 on the VAE's device.
double latent_scaling_factor(AutoencoderKL& vae, const Dataset& data, int batches, int batch_size, uint64_t seed);

// Mean per-image PSNR (dB, images in [-1, 1] read as [0, 1]) of decode(encode(x).mean).
double reconstruction_psnr(AutoencoderKL& vae, const torch::Tensor& images_u8, int batch_size);

// PSNR (dB) per image of reconstructions against references, both [-1, 1]: [B].
torch::Tensor psnr_per_image(const torch::Tensor& recon, const torch::Tensor& ref);

}  // namespace diffuse
