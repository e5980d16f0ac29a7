#pragma once
// diffusers' continuous-input Transformer2DModel and its BasicTransformerBlock (the
// spatial transformers of Stable Diffusion UNets), with diffusers' state-dict names:
//   norm, proj_in, transformer_blocks.N.{norm1, attn1, norm2, attn2, norm3, ff.net.0.proj,
//   ff.net.2}, proj_out.
// proj_in / proj_out are 1x1 convolutions (SD 1.x) or Linear layers (use_linear_projection,
// SD 2.x). Only norm_type "layer_norm" with the GEGLU feed-forward is implemented.
#include <torch/torch.h>

#include <cstdint>
#include <optional>

#include "nn/attention.h"
#include "nn/linear.h"

namespace diffuse::nn {

// FeedForward with GEGLU: net.0.proj Linear(dim, 2*inner) -> hidden * gelu(gate) ->
// net.1 Dropout -> net.2 Linear(inner, dim_out).
class GEGLUFeedForwardImpl : public torch::nn::Module {
 public:
  GEGLUFeedForwardImpl(int64_t dim, int64_t dim_out = -1, int64_t mult = 4, double dropout = 0.0,
                       int64_t inner_dim = -1, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::ModuleList net{nullptr};
  nn::Linear proj{nullptr};          // net.0.proj
  torch::nn::Dropout drop{nullptr};  // net.1
  nn::Linear out{nullptr};           // net.2
};
TORCH_MODULE(GEGLUFeedForward);

struct BasicTransformerBlockOptions {
  int64_t dim = 0;
  int64_t num_attention_heads = 8;
  int64_t attention_head_dim = 64;
  double dropout = 0.0;
  std::optional<int64_t> cross_attention_dim;  // attn2 key/value width; default dim
  bool attention_bias = false;
  bool only_cross_attention = false;   // attn1 also attends to encoder_hidden_states
  bool double_self_attention = false;  // attn2 is a second self-attention
  bool upcast_attention = false;
  bool norm_elementwise_affine = true;
  double norm_eps = 1e-5;
  std::optional<int64_t> ff_inner_dim;
  bool ff_bias = true;
  bool attention_out_bias = true;
};

class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  explicit BasicTransformerBlockImpl(const BasicTransformerBlockOptions& o);
  // x [B, N, dim]; encoder_hidden_states [B, M, cross_attention_dim] (self-attention in attn2
  // when undefined); encoder_attention_mask: additive bias [B, 1, M] or [B, M] (optional).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& encoder_hidden_states = {},
                        const torch::Tensor& encoder_attention_mask = {});

  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
  GEGLUFeedForward ff{nullptr};

 private:
  BasicTransformerBlockOptions opt_;
};
TORCH_MODULE(BasicTransformerBlock);

struct Transformer2DModelOptions {
  int64_t num_attention_heads = 16;
  int64_t attention_head_dim = 88;
  int64_t in_channels = 0;
  int64_t out_channels = -1;  // -1: in_channels
  int64_t num_layers = 1;
  double dropout = 0.0;
  int64_t norm_num_groups = 32;
  std::optional<int64_t> cross_attention_dim;
  bool attention_bias = false;
  bool use_linear_projection = false;
  bool only_cross_attention = false;
  bool double_self_attention = false;
  bool upcast_attention = false;
  bool norm_elementwise_affine = true;
  double norm_eps = 1e-5;  // LayerNorm eps of the blocks (the GroupNorm uses 1e-6, as in diffusers)
};

class Transformer2DModelImpl : public torch::nn::Module {
 public:
  explicit Transformer2DModelImpl(const Transformer2DModelOptions& o);
  // x [B, in_channels, H, W] -> [B, out_channels, H, W] (residual added).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& encoder_hidden_states = {},
                        const torch::Tensor& encoder_attention_mask = {});
  const Transformer2DModelOptions& options() const { return opt_; }

  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Conv2d proj_in_conv{nullptr}, proj_out_conv{nullptr};  // use_linear_projection false
  nn::Linear proj_in_linear{nullptr}, proj_out_linear{nullptr};     // use_linear_projection true
  torch::nn::ModuleList transformer_blocks{nullptr};
  std::vector<BasicTransformerBlock> blocks;

 private:
  Transformer2DModelOptions opt_;
  int64_t inner_dim_;
};
TORCH_MODULE(Transformer2DModel);

}  // namespace diffuse::nn
