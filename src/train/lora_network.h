#pragma once
// Trainable LoRA adapters on a Stable Diffusion UNet (and optionally its CLIP text encoder),
// in kohya's layout: for a targeted Linear or Conv2d with weight W, a down matrix (rank x in,
// a rank x in x kh x kw convolution for 3x3 layers), an up matrix (out x rank, 1x1 for
// convolutions) and alpha; the layer computes with W + multiplier * (alpha / rank) * up @ down,
// exactly what pipelines/lora.h merges from the saved file. The base weights stay frozen (and in
// their dtype); `attach` points each targeted layer at its merged weight, a tensor of the autograd
// graph, so gradients reach only up and down. `up` starts at zero: an attached, untrained network
// leaves every output unchanged.
//
// Layers (diffusers module names, kohya key = lora_unet_ / lora_te_ + name with '.' -> '_'):
//  - attention: to_q, to_k, to_v, to_out.0 of every attention of the UNet's transformer blocks;
//  - transformer: also proj_in, proj_out and the feed-forward ff.net.0.proj, ff.net.2 (kohya's
//    default UNet set);
//  - conv (kohya's LoCon): the resnets' conv1 / conv2 (3x3, with conv_rank / conv_alpha),
//    conv_shortcut and time_emb_proj, and the down/upsamplers' convolutions;
//  - text encoder: q_proj, k_proj, v_proj, out_proj, fc1, fc2 of every CLIP layer.
#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace diffuse {

struct LoraNetworkOptions {
  int rank = 4;
  double alpha = 1.0;
  std::string unet_layers = "attention";  // attention | transformer
  bool conv = false;                      // + the resnet / sampler layers (LoCon)
  int conv_rank = 0;                      // 0 = rank
  double conv_alpha = 0;                  // 0 = alpha
  bool text_encoder = false;
};

// A layer that gets an adapter: its weight's parameter name (diffusers / transformers naming,
// ending in ".weight") and the kohya base name of its LoRA keys.
struct LoraTarget {
  std::string weight;  // e.g. down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight
  std::string key;     // e.g. lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q
  std::vector<int64_t> shape;
  int rank = 0;
  double alpha = 0;
  bool text = false;
};

// The targets among the weights of a UNet2DConditionModel (`unet`) and a CLIPTextModel (`text`)
// given as name -> shape; names only, so that full-size layouts can be checked without weights.
// Throws diffuse::Error (naming `rank` or `conv_rank`) when a rank exceeds a layer's width.
std::vector<LoraTarget> lora_targets_for(const std::vector<std::pair<std::string, std::vector<int64_t>>>& unet,
                                         const std::vector<std::pair<std::string, std::vector<int64_t>>>& text,
                                         const LoraNetworkOptions& opt);

class LoraNetworkImpl : public torch::nn::Module {
 public:
  // Creates the adapters for `unet` and (when opt.text_encoder) `text` (may be null). down is
  // initialised like kohya's (uniform in +-1/sqrt(fan_in), from `seed`), up with zeros; both
  // float32 on the weights' device.
  LoraNetworkImpl(torch::nn::Module& unet, torch::nn::Module* text, const LoraNetworkOptions& opt, uint64_t seed);

  // Points every targeted layer at W + multiplier * (alpha / rank) * up @ down (in W's dtype, or
  // in `dtype` when given: the compute dtype of 16-bit weights computed wide, see
  // UNet2DConditionModel::set_compute_dtype). Call again after each optimizer step (the merged
  // weights are part of the graph).
  void attach(double multiplier = 1.0, std::optional<torch::Dtype> dtype = std::nullopt);
  // Restores the base weights.
  void detach();

  const std::vector<LoraTarget>& targets() const { return targets_; }
  // Trainable tensors, named "<key>.lora_down.weight" / "<key>.lora_up.weight"; unet or text ones.
  std::vector<std::pair<std::string, torch::Tensor>> named_lora_parameters(bool text) const;
  // kohya's file layout: down / up (in `dtype`) and alpha (a scalar of `dtype`) per layer.
  std::map<std::string, torch::Tensor> kohya_state_dict(torch::Dtype dtype = torch::kFloat32) const;
  // Sets down / up from a kohya-format file's tensors (continuing from a saved LoRA); every layer
  // must be present with the same rank and alpha. Throws diffuse::Error naming `source`.
  void load_kohya_state_dict(const std::map<std::string, torch::Tensor>& sd, const std::string& source);

 private:
  struct Layer {
    torch::nn::LinearImpl* linear = nullptr;  // exactly one of linear / conv
    torch::nn::Conv2dImpl* conv = nullptr;
    torch::Tensor base;  // the layer's registered weight
    torch::Tensor down, up;
  };
  std::vector<LoraTarget> targets_;
  std::vector<Layer> layers_;
};
TORCH_MODULE(LoraNetwork);

}  // namespace diffuse
