// Gradient checkpointing of the SD UNet (nn/checkpoint.h): with it the UNet's output and the
// gradients of LoRA adapters (UNet and text encoder), of the text embeddings and of every UNet
// parameter (full fine-tuning) equal those without it (to 1e-6; under bf16 autocast to bf16
// rounding); the graph then holds checkpoint nodes, and none with grad mode off.
#include <gtest/gtest.h>

#include <optional>
#include <set>

#include "fixtures.h"
#include "nn/autocast.h"
#include "pipelines/sd_pipeline.h"
#include "sd_tiny_text.h"
#include "train/lora_network.h"

namespace diffuse {
namespace {

// Whether the autograd graph of `t` holds a checkpoint node.
bool has_checkpoint_node(const torch::Tensor& t) {
  std::vector<torch::autograd::Node*> todo{t.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  while (!todo.empty()) {
    auto* n = todo.back();
    todo.pop_back();
    if (!n || !seen.insert(n).second) continue;
    if (n->name().find("CheckpointFunction") != std::string::npos) return true;
    for (const auto& e : n->next_edges()) todo.push_back(e.function.get());
  }
  return false;
}

struct CkptRun {
  torch::Tensor out;
  std::vector<torch::Tensor> grads;
  bool checkpointed = false;
};

// One forward / backward of the UNet (text embeddings from the adapted text encoder), returning
// the output and the gradients of `params` (and of the embeddings' leaf input).
CkptRun ckpt_run(SDPipeline& pipe, LoraNetwork* net, const std::vector<torch::Tensor>& params, bool checkpointing,
                 bool bf16, std::optional<torch::Dtype> merged = std::nullopt) {
  for (auto p : params)
    if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
  pipe.unet->set_gradient_checkpointing(checkpointing);
  torch::manual_seed(4);
  auto x = torch::randn({2, 4, 8, 8}), t = torch::tensor({900.0f, 30.0f}), w = torch::randn({2, 4, 8, 8});
  auto ids = torch::tensor({{998, 40, 41, 42, 999, 999}, {998, 50, 999, 999, 999, 999}}, torch::kInt64);
  if (net) (*net)->attach(1.0, merged);
  auto ehs = pipe.text->model->forward(ids).last_hidden_state;
  CkptRun r;
  {
    nn::AutocastGuard autocast(torch::kCPU, bf16);
    r.out = pipe.unet->forward(x, t, ehs).to(torch::kFloat32);
  }
  r.checkpointed = has_checkpoint_node(r.out);
  (r.out * w).sum().backward();
  for (const auto& p : params) r.grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
  if (net) (*net)->detach();
  return r;
}

void expect_same_grads(const CkptRun& a, const CkptRun& b, double rel) {
  EXPECT_LE(test::max_abs_diff(a.out, b.out), rel * a.out.abs().max().item<double>());
  ASSERT_EQ(a.grads.size(), b.grads.size());
  int nonzero = 0;
  for (size_t i = 0; i < a.grads.size(); ++i) {
    ASSERT_TRUE(a.grads[i].defined()) << i;
    ASSERT_TRUE(b.grads[i].defined()) << i;
    const double scale = a.grads[i].abs().max().item<double>();
    if (scale > 0) ++nonzero;
    EXPECT_LE(test::max_abs_diff(a.grads[i], b.grads[i]), rel * scale + 1e-12) << "tensor " << i;
  }
  EXPECT_GT(nonzero, static_cast<int>(a.grads.size()) / 2);
}

TEST(GradientCheckpointing, LoraAndFullGradientsEqualThoseWithout) {
  test::TempDir dir;
  auto pipe = SDPipeline::load(test::tiny_sd_folder(dir / "pipe"));
  for (auto& p : pipe.unet->parameters()) p.set_requires_grad(false);
  for (auto& p : pipe.text->model->parameters()) p.set_requires_grad(false);
  LoraNetworkOptions o;
  o.rank = 4;
  o.alpha = 4;
  o.unet_layers = "transformer";
  o.conv = true;  // adapters inside the resnets too
  o.text_encoder = true;
  LoraNetwork net(*pipe.unet, pipe.text->model.ptr().get(), o, 1);
  {  // random up matrices: down gets gradients too
    torch::NoGradGuard ng;
    auto gen = at::detail::createCPUGenerator(7);
    for (const auto& [name, p] : net->named_lora_parameters(false))
      if (name.find("lora_up") != std::string::npos) p.copy_(torch::randn(p.sizes(), gen) * 0.1);
  }
  std::vector<torch::Tensor> lora;
  for (const auto& p : net->parameters()) lora.push_back(p);
  const auto plain = ckpt_run(pipe, &net, lora, false, false);
  const auto ckpt = ckpt_run(pipe, &net, lora, true, false);
  EXPECT_FALSE(plain.checkpointed);
  EXPECT_TRUE(ckpt.checkpointed);
  {
    // The two graphs sum gradients in another order; the fp32 convolutions' Winograd transforms
    // round at about 1e-6 of a tensor's scale (nn/winograd_conv.h), so the sums differ by up to
    // about 1.2e-6 of a tensor's largest gradient (4e-7 with the direct algorithm).
    SCOPED_TRACE("LoRA, fp32");
    expect_same_grads(plain, ckpt, 3e-6);
  }
  {  // Under bf16 autocast (restored for the recomputation), the base in bf16 as train-lora --bf16 has it.
    pipe.unet->to(torch::kBFloat16);
    const auto plain_bf16 = ckpt_run(pipe, &net, lora, false, true);
    const auto ckpt_bf16 = ckpt_run(pipe, &net, lora, true, true);
    EXPECT_TRUE(ckpt_bf16.checkpointed);
    // bf16 gradients of activations used twice are summed in bf16 in another order than without
    // checkpointing: equal up to bf16 rounding (one ulp is 0.8 %).
    SCOPED_TRACE("LoRA, bf16 autocast");
    expect_same_grads(plain_bf16, ckpt_bf16, 5e-2);
    pipe.unet->to(torch::kFloat32);
  }
  // Without grad mode, nothing is checkpointed.
  {
    torch::NoGradGuard ng;
    pipe.unet->set_gradient_checkpointing(true);
    auto x = torch::randn({1, 4, 8, 8});
    EXPECT_FALSE(has_checkpoint_node(pipe.unet->forward(x, torch::tensor({5.0f}), torch::randn({1, 7, 32}))));
  }

  // Full fine-tuning: every UNet parameter, no adapters.
  std::vector<torch::Tensor> all;
  for (auto& p : pipe.unet->parameters()) {
    p.set_requires_grad(true);
    all.push_back(p);
  }
  const auto full_plain = ckpt_run(pipe, nullptr, all, false, false);
  const auto full_ckpt = ckpt_run(pipe, nullptr, all, true, false);
  EXPECT_TRUE(full_ckpt.checkpointed);
  {
    // Every gradient of the whole UNet: the two graphs sum them in another order, and on an
    // AVX-512/AMX Xeon the fp32 sums differ by up to 1.6e-6 of a tensor's largest gradient (on
    // AMD EPYC by less than 1e-6). Wrong gradients would be off by their own size.
    SCOPED_TRACE("full, fp32");
    expect_same_grads(full_plain, full_ckpt, 1e-5);
  }
  // fp32 weights under bf16 autocast (train-lora --full --bf16).
  const auto full_plain_bf16 = ckpt_run(pipe, nullptr, all, false, true);
  const auto full_ckpt_bf16 = ckpt_run(pipe, nullptr, all, true, true);
  SCOPED_TRACE("full, bf16 autocast");
  expect_same_grads(full_plain_bf16, full_ckpt_bf16, 5e-2);
}

// LoRA on a UNet kept in fp16 and computed in fp32 layer by layer (train-lora without --bf16 on
// a 16-bit base, with checkpointing): the gradients are those of the same weights upcast once,
// and the weights stay fp16.
TEST(GradientCheckpointing, SixteenBitBaseTrainsLikeItsUpcast) {
  test::TempDir dir;
  const std::string folder = test::tiny_sd_folder(dir / "pipe");
  auto make = [&](bool keep16, LoraNetwork& net) {
    auto pipe = SDPipeline::load(folder);
    pipe.unet->to(torch::kFloat16);
    if (keep16)
      pipe.unet->set_compute_dtype(torch::kFloat32);
    else
      pipe.unet->to(torch::kFloat32);  // exact
    for (auto& p : pipe.unet->parameters()) p.set_requires_grad(false);
    for (auto& p : pipe.text->model->parameters()) p.set_requires_grad(false);
    LoraNetworkOptions o;
    o.rank = 4;
    o.alpha = 4;
    o.unet_layers = "transformer";
    o.conv = true;
    net = LoraNetwork(*pipe.unet, nullptr, o, 1);
    torch::NoGradGuard ng;
    auto gen = at::detail::createCPUGenerator(7);
    for (const auto& [name, p] : net->named_lora_parameters(false))
      if (name.find("lora_up") != std::string::npos) p.copy_(torch::randn(p.sizes(), gen) * 0.1);
    return pipe;
  };
  LoraNetwork net16{nullptr}, net32{nullptr};
  auto pipe16 = make(true, net16);
  auto pipe32 = make(false, net32);
  auto params = [](LoraNetwork& n) {
    std::vector<torch::Tensor> v;
    for (const auto& p : n->parameters()) v.push_back(p);
    return v;
  };
  const auto upcast = ckpt_run(pipe32, &net32, params(net32), false, false);
  const auto kept = ckpt_run(pipe16, &net16, params(net16), true, false, torch::kFloat32);
  EXPECT_TRUE(kept.checkpointed);
  expect_same_grads(upcast, kept, 3e-6);  // summation order, with Winograd's rounding (see above)
  for (const auto& p : pipe16.unet->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat16);
}

}  // namespace
}  // namespace diffuse
