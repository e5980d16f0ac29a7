#include "nn/transformer_2d.h"

#include "core/error.h"
#include "nn/compute_dtype.h"
#include "nn/gelu.h"

namespace diffuse::nn {

GEGLUFeedForwardImpl::GEGLUFeedForwardImpl(int64_t dim, int64_t dim_out, int64_t mult, double dropout,
                                           int64_t inner_dim, bool bias) {
  if (inner_dim <= 0) inner_dim = dim * mult;
  if (dim_out <= 0) dim_out = dim;
  // net.0 is a GEGLU module whose only child is `proj`.
  auto geglu = std::make_shared<torch::nn::Module>("GEGLU");
  proj = geglu->register_module("proj", nn::Linear(torch::nn::LinearOptions(dim, 2 * inner_dim).bias(bias)));
  drop = torch::nn::Dropout(dropout);
  out = nn::Linear(torch::nn::LinearOptions(inner_dim, dim_out).bias(bias));
  net = register_module("net", torch::nn::ModuleList());
  net->push_back(geglu);
  net->push_back(drop);
  net->push_back(out);
}

torch::Tensor GEGLUFeedForwardImpl::forward(const torch::Tensor& x) {
  auto hg = proj->forward(x).chunk(2, -1);
  auto h = hg[0] * nn::gelu(hg[1]);
  return out->forward(drop->forward(h));
}

BasicTransformerBlockImpl::BasicTransformerBlockImpl(const BasicTransformerBlockOptions& o) : opt_(o) {
  auto ln = [&](const char* name) {
    return register_module(
        name, torch::nn::LayerNorm(
                  torch::nn::LayerNormOptions({o.dim}).eps(o.norm_eps).elementwise_affine(o.norm_elementwise_affine)));
  };
  norm1 = ln("norm1");
  AttentionOptions a1(o.dim, o.num_attention_heads, o.attention_head_dim);
  a1.dropout = o.dropout;
  a1.bias = o.attention_bias;
  if (o.only_cross_attention) a1.cross_attention_dim = o.cross_attention_dim;
  a1.upcast_attention = o.upcast_attention;
  a1.out_bias = o.attention_out_bias;
  attn1 = register_module("attn1", Attention(a1));
  if (o.cross_attention_dim || o.double_self_attention) {
    norm2 = ln("norm2");
    AttentionOptions a2(o.dim, o.num_attention_heads, o.attention_head_dim);
    if (!o.double_self_attention) a2.cross_attention_dim = o.cross_attention_dim;
    a2.dropout = o.dropout;
    a2.bias = o.attention_bias;
    a2.upcast_attention = o.upcast_attention;
    a2.out_bias = o.attention_out_bias;
    attn2 = register_module("attn2", Attention(a2));
  }
  norm3 = ln("norm3");
  ff = register_module("ff",
                       GEGLUFeedForward(o.dim, -1, 4, o.dropout, o.ff_inner_dim ? *o.ff_inner_dim : -1, o.ff_bias));
}

torch::Tensor BasicTransformerBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& encoder_hidden_states,
                                                 const torch::Tensor& encoder_attention_mask) {
  LayerUpcast wide({this});
  auto h = x;
  {
    auto n = norm1->forward(h);
    auto a = opt_.only_cross_attention ? attn1->forward(n, encoder_hidden_states, encoder_attention_mask)
                                       : attn1->forward(n);
    h = a + h;
  }
  if (attn2) {
    auto n = norm2->forward(h);
    auto a = opt_.double_self_attention ? attn2->forward(n)
                                        : attn2->forward(n, encoder_hidden_states, encoder_attention_mask);
    h = a + h;
  }
  return ff->forward(norm3->forward(h)) + h;
}

Transformer2DModelImpl::Transformer2DModelImpl(const Transformer2DModelOptions& o) : opt_(o) {
  if (opt_.out_channels <= 0) opt_.out_channels = o.in_channels;
  inner_dim_ = o.num_attention_heads * o.attention_head_dim;
  if (o.in_channels <= 0 || inner_dim_ <= 0)
    throw Error("Transformer2DModel: in_channels and heads * head_dim must be positive");
  if (o.norm_num_groups <= 0 || o.in_channels % o.norm_num_groups != 0)
    throw Error("Transformer2DModel: in_channels " + std::to_string(o.in_channels) +
                " is not divisible by norm_num_groups " + std::to_string(o.norm_num_groups));
  norm = register_module("norm",
                         torch::nn::GroupNorm(torch::nn::GroupNormOptions(o.norm_num_groups, o.in_channels).eps(1e-6)));
  if (o.use_linear_projection)
    proj_in_linear = register_module("proj_in", nn::Linear(o.in_channels, inner_dim_));
  else
    proj_in_conv =
        register_module("proj_in", torch::nn::Conv2d(torch::nn::Conv2dOptions(o.in_channels, inner_dim_, 1)));
  transformer_blocks = register_module("transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    BasicTransformerBlockOptions b;
    b.dim = inner_dim_;
    b.num_attention_heads = o.num_attention_heads;
    b.attention_head_dim = o.attention_head_dim;
    b.dropout = o.dropout;
    b.cross_attention_dim = o.cross_attention_dim;
    b.attention_bias = o.attention_bias;
    b.only_cross_attention = o.only_cross_attention;
    b.double_self_attention = o.double_self_attention;
    b.upcast_attention = o.upcast_attention;
    b.norm_elementwise_affine = o.norm_elementwise_affine;
    b.norm_eps = o.norm_eps;
    blocks.emplace_back(b);
    transformer_blocks->push_back(blocks.back());
  }
  if (o.use_linear_projection)
    proj_out_linear = register_module("proj_out", nn::Linear(inner_dim_, opt_.out_channels));
  else
    proj_out_conv =
        register_module("proj_out", torch::nn::Conv2d(torch::nn::Conv2dOptions(inner_dim_, opt_.out_channels, 1)));
}

torch::Tensor Transformer2DModelImpl::forward(const torch::Tensor& x, const torch::Tensor& encoder_hidden_states,
                                              const torch::Tensor& encoder_attention_mask) {
  if (x.dim() != 4 || x.size(1) != opt_.in_channels)
    throw Error("Transformer2DModel: expected [B, " + std::to_string(opt_.in_channels) + ", H, W] input");
  const int64_t b = x.size(0), hgt = x.size(2), wid = x.size(3);
  // the blocks upcast themselves; the norm and projections here
  auto of = [](const auto& holder) -> torch::nn::Module* { return holder.is_empty() ? nullptr : holder.ptr().get(); };
  LayerUpcast own({of(norm), of(proj_in_conv), of(proj_in_linear), of(proj_out_conv), of(proj_out_linear)});
  auto h = norm->forward(x);
  if (proj_in_conv) {
    h = proj_in_conv->forward(h).permute({0, 2, 3, 1}).reshape({b, hgt * wid, inner_dim_});
  } else {
    h = proj_in_linear->forward(h.permute({0, 2, 3, 1}).reshape({b, hgt * wid, opt_.in_channels}));
  }
  for (auto& blk : blocks) h = blk->forward(h, encoder_hidden_states, encoder_attention_mask);
  if (proj_out_conv) {
    h = proj_out_conv->forward(h.reshape({b, hgt, wid, inner_dim_}).permute({0, 3, 1, 2}).contiguous());
  } else {
    h = proj_out_linear->forward(h).reshape({b, hgt, wid, opt_.out_channels}).permute({0, 3, 1, 2}).contiguous();
  }
  return h + x;
}

}  // namespace diffuse::nn
