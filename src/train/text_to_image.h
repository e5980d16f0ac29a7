#pragma once
// `diffuse train --text-encoder ...`: trains a text-conditioned UNet2DConditionModel from
// scratch on a captioned dataset (train/captioned.h), in the latent space of one of our VAEs,
// together with a small CLIP-architecture text encoder (a preset, trained from scratch) or with a
// given one (frozen). Captions are dropped to "" with `caption_dropout` for classifier-free
// guidance. The output folder is a diffusers StableDiffusionPipeline (model_index.json, unet/,
// text_encoder/, tokenizer/, vae/, scheduler/; EMA weights) that `diffuse generate --prompt` runs,
// plus checkpoint/ (bit-exact resume), metrics.csv, loss.png and samples/ grids of fixed prompts.
// Stable Diffusion folders need a VAE, so text-to-image trains on latents (`latent` is required).
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/clip_text.h"
#include "models/clip_tokenizer.h"
#include "train/trainer.h"

namespace diffuse {

struct TextToImageOptions {
  // data, out, latent (required), config (t2i-tiny | t2i-small or a UNet2DConditionModel
  // config.json), image_size (bucket resolution; 0 = 64), steps, batch, lr, lr_schedule, warmup,
  // weight_decay, grad_clip, ema_decay, prediction, beta_schedule, num_train_timesteps,
  // min_snr_gamma, bf16, seed, save_every, sample_every, resume, device, quiet.
  TrainOptions train;
  // clip-tiny | clip-small (trained from scratch), or a folder: a
  // CLIPTextModel folder or a StableDiffusionPipeline folder (its text_encoder/ and tokenizer/),
  // used frozen.
  std::string text_encoder = "clip-tiny";
  // The vocabulary of a preset text encoder: "captions" (CLIPTokenizer::reduced() to the training
  // captions: a few thousand embedding rows instead of 49,408) or "clip" (all of CLIP's). Empty:
  // "captions" for a new run, the checkpoint's for --resume ("clip" for runs from before the option).
  std::string vocabulary;
  std::string caption_ext = ".txt";
  double caption_dropout = 0.1;
  std::vector<std::string> sample_prompts;  // grid rows; empty = the first 8 distinct captions
};

// Text-encoder presets: name -> (description, config).
std::vector<std::pair<std::string, std::string>> text_encoder_presets();
CLIPTextConfig text_encoder_preset(const std::string& name);
// UNet2DConditionModel presets for text-to-image ("t2i-tiny", "t2i-small").
bool is_t2i_preset(const std::string& name);
nlohmann::json t2i_unet_preset(const std::string& name, int sample_size, int channels, int cross_attention_dim);

// Writes a transformers CLIP tokenizer folder (vocab.json, merges.txt, special_tokens_map.json,
// tokenizer_config.json) for the CLIP BPE vocabulary of `bpe_file` (bpe_simple_vocab_16e6.txt.gz,
// default CLIPTokenizer::builtin_vocab_path()), as openai/CLIP and transformers build it.
void write_clip_tokenizer_folder(const std::string& dir, const std::string& bpe_file = "");

TrainResult train_text_to_image(const TextToImageOptions& opt);

// Copies the StableDiffusionPipeline folder `model` to `out` (which must not exist) with its
// tokenizer cut down to the tokens of the captions of `data` (CLIPTokenizer::reduced, train split)
// and its text encoder's embedding rows to match: those captions encode exactly as before. For
// pipelines trained with --vocab clip. Returns the vocabulary sizes before and after.
std::pair<int64_t, int64_t> reduce_pipeline_vocabulary(const std::string& model, const std::string& data,
                                                       const std::string& out, const std::string& caption_ext = ".txt");

}  // namespace diffuse
