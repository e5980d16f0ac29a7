#include "nn/int8_weights.h"

#include <gtest/gtest.h>

#include "nn/compute_dtype.h"
#include "nn/resnet.h"

using namespace diffuse;

namespace {

struct ConvAndLinearImpl : torch::nn::Module {
  ConvAndLinearImpl() {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 6, 3).padding(1)));
    norm = register_module("norm", torch::nn::GroupNorm(torch::nn::GroupNormOptions(2, 6)));
    proj = register_module("proj", torch::nn::Linear(6, 5));
    table = register_module("table", torch::nn::Embedding(7, 6));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = norm(conv(x)).mean({2, 3});
    return proj(h + table->weight[1]);
  }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Linear proj{nullptr};
  torch::nn::Embedding table{nullptr};
};
TORCH_MODULE(ConvAndLinear);

}  // namespace

TEST(Int8Weights, RoundTripIsWithinHalfAStepPerChannel) {
  torch::manual_seed(0);
  // channels of very different ranges, one all zero, one with a single outlier
  auto w = torch::randn({8, 4, 3, 3}) * torch::tensor({1e-3, 0.02, 0.5, 1.0, 3.0, 40.0, 0.0, 1.0}).view({8, 1, 1, 1});
  w[7][0][0][0] = 25.0;
  const auto [q, scale] = nn::quantize_int8(w);
  EXPECT_EQ(q.scalar_type(), torch::kInt8);
  EXPECT_EQ(q.sizes(), w.sizes());
  EXPECT_EQ(scale.scalar_type(), torch::kFloat32);
  ASSERT_EQ(scale.sizes(), torch::IntArrayRef({8}));
  EXPECT_LE(q.abs().max().item<int>(), 127);
  const auto amax = std::get<0>(w.abs().reshape({8, -1}).max(1));
  EXPECT_TRUE(torch::allclose(scale, amax / 127.0, 1e-6, 0));
  EXPECT_EQ(scale[6].item<float>(), 0.0f);
  const auto deq = nn::dequantize_int8(q, scale);
  EXPECT_EQ(deq.scalar_type(), torch::kFloat32);
  const auto err = std::get<0>((w - deq).abs().reshape({8, -1}).max(1));
  // half a step, with room for float32 rounding of the division
  EXPECT_TRUE((err <= scale * (0.5 + 1e-5)).all().item<bool>()) << err << "\n" << scale;
  EXPECT_TRUE((err > 0).any().item<bool>());  // the bound is not met by doing nothing
  // fp16 input: quantised from its exact values
  const auto [q16, s16] = nn::quantize_int8(w.to(torch::kFloat16));
  const auto [q32, s32] = nn::quantize_int8(w.to(torch::kFloat16).to(torch::kFloat32));
  EXPECT_TRUE(torch::equal(q16, q32));
  EXPECT_TRUE(torch::equal(s16, s32));
}

TEST(Int8Weights, WeightsOnTheGridComeBackExactly) {
  torch::manual_seed(1);
  // k * step with integer k in [-127, 127] and some |k| = 127 per row
  const auto step = torch::tensor({0.0078125f, 0.25f, 2.0f, 0.001953125f});
  auto k = torch::randint(-127, 128, {4, 10}, torch::kFloat32);
  k.select(1, 3).fill_(127);
  k[2][3] = -127;
  const auto w = k * step.unsqueeze(1);
  const auto [q, scale] = nn::quantize_int8(w);
  EXPECT_TRUE(torch::equal(scale, step));
  EXPECT_TRUE(torch::equal(q.to(torch::kFloat32), k));
  EXPECT_TRUE(torch::equal(nn::dequantize_int8(q, scale), w));
  EXPECT_EQ(nn::dequantize_int8(q, scale, torch::kBFloat16).scalar_type(), torch::kBFloat16);
}

// A layer with int8 weights computes exactly what the same layer with the dequantised float32
// weights computes, layer by layer under a scope, and its int8 weights come back afterwards.
TEST(Int8Weights, LayersComputeWithTheDequantisedWeightsExactly) {
  torch::manual_seed(2);
  ConvAndLinear q8, ref;
  q8->eval();
  ref->eval();
  torch::NoGradGuard ng;
  for (size_t i = 0; i < q8->parameters().size(); ++i) ref->parameters()[i].copy_(q8->parameters()[i]);
  EXPECT_EQ(nn::quantize_int8_weights(*q8), 2);  // conv and proj; not the norm or the embedding
  EXPECT_EQ(q8->conv->weight.scalar_type(), torch::kInt8);
  EXPECT_EQ(q8->proj->weight.scalar_type(), torch::kInt8);
  EXPECT_EQ(q8->conv->bias.scalar_type(), torch::kFloat32);
  EXPECT_EQ(q8->norm->weight.scalar_type(), torch::kFloat32);
  EXPECT_EQ(q8->table->weight.scalar_type(), torch::kFloat32);
  EXPECT_FALSE(nn::int8_scale_of(*q8->norm).defined());
  ASSERT_TRUE(nn::int8_scale_of(*q8->conv).defined());
  for (auto* m : {static_cast<torch::nn::Module*>(ref->conv.get()), static_cast<torch::nn::Module*>(ref->proj.get())}) {
    auto w = m->named_parameters(false)["weight"];
    const auto qs = nn::quantize_int8(w);
    w.copy_(nn::dequantize_int8(qs.q, qs.scale));
  }
  const auto conv_q = q8->conv->weight.clone();
  const auto x = torch::randn({2, 3, 5, 5});
  const auto want = ref->forward(x);
  torch::Tensor got;
  {
    nn::ComputeDtypeGuard wide({q8.ptr().get()}, torch::kFloat32);
    EXPECT_EQ(q8->conv->weight.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::equal(q8->conv->weight, ref->conv->weight));
    EXPECT_EQ(nn::int8_scale_of(*q8->conv).defined(), false);  // the weight is wide while it runs
    got = q8->forward(x);
  }
  EXPECT_TRUE(torch::equal(got, want));
  EXPECT_EQ(q8->conv->weight.scalar_type(), torch::kInt8);
  EXPECT_TRUE(torch::equal(q8->conv->weight, conv_q));
  EXPECT_EQ(q8->conv->named_buffers(false)[nn::kInt8ScaleName].scalar_type(), torch::kFloat32);
  // bf16 compute: the same weights dequantised into bf16, the scale untouched
  {
    nn::ComputeDtypeGuard narrow({q8.ptr().get()}, torch::kBFloat16);
    EXPECT_TRUE(torch::equal(q8->proj->weight, ref->proj->weight.to(torch::kBFloat16)));
    EXPECT_EQ(q8->proj->named_buffers(false)[nn::kInt8ScaleName].scalar_type(), torch::kFloat32);
  }
  EXPECT_EQ(q8->proj->weight.scalar_type(), torch::kInt8);
}

TEST(Int8Weights, ResnetLayersDequantiseOneAtATimeInAScope) {
  torch::manual_seed(3);
  nn::ResnetBlock2DOptions o(16, 16, 8);
  o.groups = 4;
  nn::ResnetBlock2D q8(o), ref(o);
  q8->eval();
  ref->eval();
  torch::NoGradGuard ng;
  for (size_t i = 0; i < q8->parameters().size(); ++i) ref->parameters()[i].copy_(q8->parameters()[i]);
  const int64_t fp32_bytes = nn::tensor_bytes(*q8);
  EXPECT_EQ(nn::quantize_int8_weights(*q8), 3);  // conv1, conv2, time_emb_proj
  for (auto& p : ref->named_parameters())
    if (p.key() == "conv1.weight" || p.key() == "conv2.weight" || p.key() == "time_emb_proj.weight") {
      const auto qs = nn::quantize_int8(p.value());
      p.value().copy_(nn::dequantize_int8(qs.q, qs.scale));
    }
  // conv weights dominate: int8 plus the scales is a little over a quarter of float32
  const double ratio = static_cast<double>(nn::tensor_bytes(*q8)) / static_cast<double>(fp32_bytes);
  EXPECT_GT(ratio, 0.25);
  EXPECT_LT(ratio, 0.30);
  const auto x = torch::randn({2, 16, 8, 8});
  const auto temb = torch::randn({2, 8});
  const auto want = ref->forward(x, temb);
  torch::Tensor got;
  {
    nn::ComputeDtypeScope scope(torch::kFloat32);
    got = q8->forward(x, temb);
  }
  EXPECT_TRUE(torch::equal(got, want));
  EXPECT_EQ(q8->conv1->weight.scalar_type(), torch::kInt8);
  // a half-precision store of the rest converts around the int8 weights and their scales
  nn::to_dtype_keeping_int8(*q8, torch::kFloat16);
  EXPECT_EQ(q8->conv1->weight.scalar_type(), torch::kInt8);
  EXPECT_EQ(q8->conv1->bias.scalar_type(), torch::kFloat16);
  EXPECT_EQ(q8->norm1->weight.scalar_type(), torch::kFloat16);
  EXPECT_EQ(nn::int8_scale_of(*q8->conv1).scalar_type(), torch::kFloat32);
}
