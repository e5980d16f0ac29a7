#pragma once
// diffusers ResnetBlock2D: norm1 -> act -> [resample] -> conv1 -> (+ time embedding) -> norm2
// -> act -> dropout -> conv2, plus an (optionally 1x1-projected) shortcut, divided by
// output_scale_factor. State-dict names: norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut.
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>

#include "nn/activations.h"
#include "nn/conv2d.h"
#include "nn/linear.h"
#include "nn/sampling.h"

namespace diffuse::nn {

struct ResnetBlock2DOptions {
  int64_t in_channels = 0;
  int64_t out_channels = -1;    // -1: in_channels
  int64_t temb_channels = 512;  // <= 0: no time embedding (no time_emb_proj)
  int64_t groups = 32;
  int64_t groups_out = -1;  // -1: groups
  double eps = 1e-6;
  double dropout = 0.0;
  std::string non_linearity = "swish";
  bool skip_time_act = false;
  std::string time_embedding_norm = "default";  // "default" (add) or "scale_shift"
  double output_scale_factor = 1.0;
  std::optional<bool> use_in_shortcut;  // default: in_channels != output channels
  bool up = false;                      // nearest 2x upsampling of both paths after norm1/act
  bool down = false;                    // 2x2 average pooling of both paths after norm1/act
  bool conv_shortcut_bias = true;
  int64_t conv_2d_out_channels = -1;  // -1: out_channels

  ResnetBlock2DOptions() = default;
  ResnetBlock2DOptions(int64_t in, int64_t out, int64_t temb)
      : in_channels(in), out_channels(out), temb_channels(temb) {}
};

class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  explicit ResnetBlock2DImpl(const ResnetBlock2DOptions& o);
  // x [B, in, H, W]; temb [B, temb_channels] (may be undefined when the block has no time_emb_proj).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb = {});

  const ResnetBlock2DOptions& options() const { return opt_; }

  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
  nn::Linear time_emb_proj{nullptr};
  torch::nn::Dropout dropout{nullptr};

 private:
  ResnetBlock2DOptions opt_;
  Activation act_;
  bool scale_shift_;
};
TORCH_MODULE(ResnetBlock2D);

}  // namespace diffuse::nn
