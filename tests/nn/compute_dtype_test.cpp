#include "nn/compute_dtype.h"

#include <gtest/gtest.h>

#include <stdexcept>

#include "nn/resnet.h"

using namespace diffuse;

namespace {

struct TwoLayersImpl : torch::nn::Module {
  TwoLayersImpl() {
    a = register_module("a", torch::nn::Linear(4, 3));
    b = register_module("b", torch::nn::Linear(3, 2));
    steps = register_buffer("steps", torch::arange(5));  // integer: never converted
    scale = register_buffer("scale", torch::full({1}, 0.1));
  }
  torch::nn::Linear a{nullptr}, b{nullptr};
  torch::Tensor steps, scale;
};
TORCH_MODULE(TwoLayers);

}  // namespace

TEST(ComputeDtypeGuard, UpcastsWhileAliveAndRestoresEachTensorsOwnDtype) {
  torch::manual_seed(0);
  TwoLayers m;
  m->to(torch::kFloat16);  // (Module::to converts integer buffers too: undo that)
  m->steps.set_data(torch::arange(5));
  // one layer already wide (e.g. after a LoRA merge): it must stay wide afterwards
  m->b->weight.set_data(m->b->weight.to(torch::kFloat32));
  const auto before = m->a->weight.clone();
  {
    nn::ComputeDtypeGuard g({m.ptr().get()}, torch::kFloat32);
    EXPECT_EQ(m->a->weight.scalar_type(), torch::kFloat32);
    EXPECT_EQ(m->scale.scalar_type(), torch::kFloat32);
    EXPECT_EQ(m->steps.scalar_type(), torch::kInt64);
    EXPECT_TRUE(nn::has_other_float_dtype(*m, torch::kFloat16));
    EXPECT_FALSE(nn::has_other_float_dtype(*m, torch::kFloat32));
  }
  EXPECT_EQ(m->a->weight.scalar_type(), torch::kFloat16);
  EXPECT_EQ(m->a->bias.scalar_type(), torch::kFloat16);
  EXPECT_EQ(m->b->weight.scalar_type(), torch::kFloat32);
  EXPECT_EQ(m->b->bias.scalar_type(), torch::kFloat16);
  EXPECT_EQ(m->scale.scalar_type(), torch::kFloat16);
  EXPECT_EQ(m->steps.scalar_type(), torch::kInt64);
  EXPECT_TRUE(torch::equal(m->a->weight, before)) << "fp16 -> fp32 -> fp16 is exact";
}

TEST(ComputeDtypeGuard, ForwardEqualsWeightsUpcastOnceAndSurvivesExceptions) {
  torch::manual_seed(1);
  TwoLayers half, wide;
  half->to(torch::kBFloat16);
  torch::NoGradGuard ng;
  for (size_t i = 0; i < half->parameters().size(); ++i)
    wide->parameters()[i].copy_(half->parameters()[i].to(torch::kFloat32));
  auto x = torch::randn({5, 4});
  torch::Tensor y;
  {
    nn::ComputeDtypeGuard g({half->a.ptr().get(), half->b.ptr().get()}, torch::kFloat32);
    y = half->b(half->a(x));
  }
  EXPECT_TRUE(torch::equal(y, wide->b(wide->a(x))));
  try {
    nn::ComputeDtypeGuard g({half.ptr().get()}, torch::kFloat32);
    throw std::runtime_error("inside");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(half->a->weight.scalar_type(), torch::kBFloat16);
  nn::ComputeDtypeGuard off({half.ptr().get()}, torch::kFloat32, /*enabled=*/false);
  EXPECT_EQ(half->a->weight.scalar_type(), torch::kBFloat16);
}

// Layers upcast themselves only inside a scope, one at a time, and compute what the whole
// module upcast at once computes, bit for bit.
TEST(ComputeDtypeScope, LayersUpcastOneAtATimeInsideAScopeOnly) {
  torch::manual_seed(0);
  nn::ResnetBlock2DOptions o(16, 16, 8);
  o.groups = 4;
  nn::ResnetBlock2D block(o);
  block->eval();
  block->to(torch::kFloat16);
  const auto x = torch::randn({2, 16, 8, 8});
  const auto temb = torch::randn({2, 8});
  torch::NoGradGuard ng;
  torch::Tensor whole;
  {
    nn::ComputeDtypeGuard wide({block.ptr().get()}, torch::kFloat32);
    whole = block->forward(x, temb);
  }
  EXPECT_FALSE(nn::ComputeDtypeScope::current().has_value());
  {
    nn::LayerUpcast none({block.ptr().get()});  // no scope: nothing converted
    EXPECT_EQ(block->conv1->weight.scalar_type(), torch::kFloat16);
  }
  torch::Tensor layered;
  {
    nn::ComputeDtypeScope scope(torch::kFloat32);
    {
      nn::ComputeDtypeScope inner(std::nullopt);  // scopes nest and restore
      EXPECT_FALSE(nn::ComputeDtypeScope::current().has_value());
    }
    EXPECT_EQ(nn::ComputeDtypeScope::current(), torch::kFloat32);
    layered = block->forward(x, temb);
  }
  EXPECT_FALSE(nn::ComputeDtypeScope::current().has_value());
  EXPECT_EQ(block->conv1->weight.scalar_type(), torch::kFloat16);  // back to storage
  EXPECT_EQ(layered.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(layered, whole));
}
