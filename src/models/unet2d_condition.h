#pragma once
// diffusers UNet2DConditionModel (the Stable Diffusion 1.x / 2.x / XL denoiser), with diffusers'
// config keys, state-dict names and folder layout (config.json +
// diffusion_pytorch_model.safetensors).
//
// Supported: CrossAttnDownBlock2D / DownBlock2D, CrossAttnUpBlock2D / UpBlock2D,
// UNetMidBlock2DCrossAttn (or no mid block), per-block head counts and transformer depths,
// linear or 1x1-conv projections, upcast_attention, any in_channels (9 for inpainting), class
// embeddings (num_class_embeds, "timestep", "identity", "projection"), time_embedding_act_fn,
// and SDXL's added conditioning (addition_embed_type "text_time": pooled text embeddings and
// micro-conditioning time ids, add_time_proj + add_embedding).
// Rejected with a diffuse::Error: other addition_embed_types, encoder_hid_dim(_type),
// time_cond_proj_dim, class_embeddings_concat, dual_cross_attention, attention_type other
// than "default", time_embedding_type other than "positional", other block types.
#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "nn/conv2d.h"
#include "nn/embeddings.h"
#include "nn/unet_2d_blocks.h"
#include "nn/unet_2d_condition_blocks.h"

namespace diffuse {

// An integer-or-per-block-list config value; `list` records which form was read so that
// to_json writes it back the same way.
struct PerBlockInt {
  std::vector<int64_t> values;  // one value (list == false) or one per block
  bool list = false;
  PerBlockInt() = default;
  PerBlockInt(int64_t v) : values{v} {}  // NOLINT: implicit like the Python default
  // Value for block i (of n); the scalar form applies to every block.
  int64_t at(size_t i) const { return list ? values.at(i) : values.at(0); }
  nlohmann::json to_json() const;
  bool operator==(const PerBlockInt& o) const { return values == o.values && list == o.list; }
};

// UNet2DConditionModel config keys, with diffusers 0.28.2 defaults. Keys of features this
// implementation rejects are kept (and written back) so that configs round-trip.
struct UNet2DConditionConfig {
  std::vector<int64_t> sample_size;  // {} = null, {s} = int, {h, w}
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  bool center_input_sample = false;
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  std::vector<std::string> down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                               "DownBlock2D"};
  std::optional<std::string> mid_block_type = std::string("UNetMidBlock2DCrossAttn");
  std::vector<std::string> up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                             "CrossAttnUpBlock2D"};
  std::vector<bool> only_cross_attention = {false};  // one value or one per block
  bool only_cross_attention_list = false;
  std::vector<int64_t> block_out_channels = {320, 640, 1280, 1280};
  PerBlockInt layers_per_block = 2;
  int64_t downsample_padding = 1;
  double mid_block_scale_factor = 1;
  double dropout = 0.0;
  std::string act_fn = "silu";
  std::optional<int64_t> norm_num_groups = 32;
  double norm_eps = 1e-5;
  PerBlockInt cross_attention_dim = 1280;
  PerBlockInt transformer_layers_per_block = 1;
  nlohmann::json reverse_transformer_layers_per_block = nullptr;  // must be null here
  std::optional<int64_t> encoder_hid_dim;
  std::optional<std::string> encoder_hid_dim_type;
  std::optional<PerBlockInt> attention_head_dim = PerBlockInt(8);
  std::optional<PerBlockInt> num_attention_heads;
  bool dual_cross_attention = false;
  bool use_linear_projection = false;
  std::optional<std::string> class_embed_type;
  std::optional<std::string> addition_embed_type;
  std::optional<int64_t> addition_time_embed_dim;
  std::optional<int64_t> num_class_embeds;
  bool upcast_attention = false;
  std::string resnet_time_scale_shift = "default";
  bool resnet_skip_time_act = false;
  double resnet_out_scale_factor = 1.0;
  std::string time_embedding_type = "positional";
  std::optional<int64_t> time_embedding_dim;
  std::optional<std::string> time_embedding_act_fn;
  std::optional<std::string> timestep_post_act;
  std::optional<int64_t> time_cond_proj_dim;
  int64_t conv_in_kernel = 3;
  int64_t conv_out_kernel = 3;
  std::optional<int64_t> projection_class_embeddings_input_dim;
  std::string attention_type = "default";
  bool class_embeddings_concat = false;
  std::optional<bool> mid_block_only_cross_attention;
  std::optional<std::string> cross_attention_norm;
  int64_t addition_embed_type_num_heads = 64;

  // Reads a diffusers config (missing keys keep defaults, unknown keys are ignored, wrong
  // JSON types throw diffuse::Error naming the key; another "_class_name" is rejected).
  static UNet2DConditionConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
  // Throws diffuse::Error on inconsistent or unsupported settings.
  void validate() const;

  size_t num_blocks() const { return block_out_channels.size(); }
  int64_t time_embed_dim() const {
    return time_embedding_dim ? *time_embedding_dim : (block_out_channels.empty() ? 0 : block_out_channels[0] * 4);
  }
  // Heads of the attentions in down block i (diffusers' `num_attention_heads or
  // attention_head_dim` quirk: SD configs name the head count attention_head_dim).
  int64_t heads(size_t i) const;
  bool only_cross(size_t i) const {
    return only_cross_attention_list ? static_cast<bool>(only_cross_attention.at(i))
                                     : static_cast<bool>(only_cross_attention.at(0));
  }
  // addition_embed_type "text_time" (SDXL): the UNet takes text_embeds and time_ids.
  bool text_time() const { return addition_embed_type && *addition_embed_type == "text_time"; }
  // text_time: how many time ids go with pooled text embeddings of `pooled_dim` features
  // (6 for an SDXL base: original size, crop top-left, target size; 5 for the refiner: original
  // size, crop, aesthetic score); -1 when the widths do not add up.
  int64_t num_time_ids(int64_t pooled_dim) const;
  bool operator==(const UNet2DConditionConfig& o) const { return to_json() == o.to_json(); }
  bool operator!=(const UNet2DConditionConfig& o) const { return !(*this == o); }
};

class UNet2DConditionModelImpl : public torch::nn::Module {
 public:
  explicit UNet2DConditionModelImpl(const UNet2DConditionConfig& config);

  // sample [B, in_channels, H, W]; timestep scalar, [1] or [B]; encoder_hidden_states
  // [B, M, cross_attention_dim]; class_labels [B] iff the model has a class embedding;
  // encoder_attention_mask [B, M] (1 keep, 0 discard), optional; text_embeds [B, P] and time_ids
  // [B, K] (diffusers' added_cond_kwargs) iff the model is text_time. Returns
  // [B, out_channels, H, W]. H and W need not be multiples of the downsampling factor (upsample
  // sizes are forwarded).
  torch::Tensor forward(torch::Tensor sample, const torch::Tensor& timestep, const torch::Tensor& encoder_hidden_states,
                        const torch::Tensor& class_labels = {}, const torch::Tensor& encoder_attention_mask = {},
                        const torch::Tensor& text_embeds = {}, const torch::Tensor& time_ids = {});

  // time_embedding(time_proj(t)) (+ class embedding) (+ add_embedding of text_embeds and the
  // time ids' add_time_proj) (then time_embedding_act_fn), for `batch`.
  torch::Tensor embed(const torch::Tensor& timestep, int64_t batch, const torch::Tensor& class_labels = {},
                      const torch::Tensor& text_embeds = {}, const torch::Tensor& time_ids = {});
  // text_time: add_embedding(cat([text_embeds, add_time_proj(time_ids).reshape(B, -1)])), [B, temb].
  torch::Tensor added_embedding(const torch::Tensor& text_embeds, const torch::Tensor& time_ids, int64_t batch);

  const UNet2DConditionConfig& config() const { return config_; }
  // The dtype forward computes in: the compute dtype when set, else the weights' dtype.
  torch::Dtype dtype() const;
  // Keeps the weights in their (lower-precision) dtype and computes in `compute`: each block's
  // weights are upcast while it runs (nn::ComputeDtypeGuard), so only one block is held wide.
  // The output equals that of the weights converted to `compute` once. nullopt: compute in the
  // weights' dtype.
  void set_compute_dtype(std::optional<torch::Dtype> compute) { compute_dtype_ = compute; }
  // Gradient checkpointing (nn/checkpoint.h) of every resnet and transformer of the blocks when
  // grad mode is on: their activations are recomputed in the backward pass instead of stored.
  // The outputs and gradients are those without it.
  void set_gradient_checkpointing(bool on) { gradient_checkpointing_ = on; }
  bool gradient_checkpointing() const { return gradient_checkpointing_; }
  torch::Device device() const;
  void set_attention_chunk_size(int64_t n);

  nn::Conv2d conv_in{nullptr};
  nn::Timesteps time_proj{nullptr};
  nn::TimestepEmbedding time_embedding{nullptr};
  torch::nn::Embedding class_embedding_table{nullptr};  // "class_embedding" (num_class_embeds)
  nn::TimestepEmbedding class_embedding_mlp{nullptr};   // "class_embedding" (timestep / projection)
  nn::Timesteps add_time_proj{nullptr};                 // text_time
  nn::TimestepEmbedding add_embedding{nullptr};         // text_time
  torch::nn::ModuleList down_blocks{nullptr}, up_blocks{nullptr};
  // Per block index exactly one of the two is non-null.
  std::vector<nn::UNetDownBlock2D> down_plain;
  std::vector<nn::CrossAttnDownBlock2D> down_cross;
  nn::UNetMidBlock2DCrossAttn mid_block{nullptr};  // null when mid_block_type is null
  std::vector<nn::UNetUpBlock2D> up_plain;
  std::vector<nn::CrossAttnUpBlock2D> up_cross;
  torch::nn::GroupNorm conv_norm_out{nullptr};  // null when norm_num_groups is null
  nn::Conv2d conv_out{nullptr};

 private:
  UNet2DConditionConfig config_;
  std::optional<torch::Dtype> compute_dtype_;
  bool gradient_checkpointing_ = false;
};
TORCH_MODULE(UNet2DConditionModel);

// Loads a diffusers UNet2DConditionModel folder (config.json + diffusion_pytorch_model.safetensors
// or a sharded .index.json), strictly: every missing / unexpected / mis-shaped key is listed
// in one diffuse::Error. float32 on the CPU, eval mode.
UNet2DConditionModel load_unet2d_condition(const std::string& dir);
// The folder's validated config.json alone.
UNet2DConditionConfig read_unet2d_condition_config(const std::string& dir);

// Writes config.json and diffusion_pytorch_model.safetensors ({"format": "pt"}) atomically.
void save_unet2d_condition(const UNet2DConditionModel& model, const std::string& dir);

}  // namespace diffuse
