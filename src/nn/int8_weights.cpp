#include "nn/int8_weights.h"

#include <vector>

#include "core/error.h"

namespace diffuse::nn {

namespace {

// Shape [out, 1, 1, ...] that broadcasts a per-channel vector over a weight of `dims` dims.
std::vector<int64_t> channel_shape(int64_t out, int64_t dims) {
  std::vector<int64_t> s(static_cast<size_t>(dims), 1);
  s[0] = out;
  return s;
}

// `m` and its descendants, each once.
template <typename F>
void for_each_module(torch::nn::Module& m, F&& f) {
  f(m);
  for (const auto& c : m.modules(/*include_self=*/false)) f(*c);
}

}  // namespace

Int8Weight quantize_int8(const torch::Tensor& w) {
  if (!w.defined() || !w.is_floating_point() || w.dim() < 1)
    throw Error("quantize_int8: expected a floating-point weight [out_channels, ...]");
  torch::NoGradGuard ng;
  const int64_t out = w.size(0);
  auto f = w.detach().to(torch::kFloat32).reshape({out, -1});
  auto scale = std::get<0>(f.abs().max(1)) / 127.0;
  auto divisor = torch::where(scale > 0, scale, torch::ones_like(scale)).unsqueeze(1);
  auto q = torch::round(f / divisor).clamp_(-127, 127).to(torch::kInt8).reshape(w.sizes());
  return {q, scale};
}

torch::Tensor dequantize_int8(const torch::Tensor& q, const torch::Tensor& scale, torch::Dtype dtype) {
  torch::NoGradGuard ng;
  auto w = q.to(torch::kFloat32) * scale.to(q.device(), torch::kFloat32).view(channel_shape(q.size(0), q.dim()));
  return dtype == torch::kFloat32 ? w : w.to(dtype);
}

int64_t quantize_int8_weights(torch::nn::Module& m) {
  torch::NoGradGuard ng;
  int64_t n = 0;
  for_each_module(m, [&](torch::nn::Module& mod) {
    torch::Tensor* w = nullptr;
    if (auto* l = dynamic_cast<torch::nn::LinearImpl*>(&mod))
      w = &l->weight;
    else if (auto* c = dynamic_cast<torch::nn::Conv2dImpl*>(&mod))
      w = &c->weight;
    if (!w || !w->defined() || !w->is_floating_point()) return;
    auto [q, scale] = quantize_int8(*w);
    w->set_requires_grad(false);  // an integer tensor cannot require grad
    w->set_data(q);
    mod.register_buffer(kInt8ScaleName, scale.to(w->device()));
    ++n;
  });
  return n;
}

torch::Tensor int8_scale_of(const torch::nn::Module& m) {
  const auto params = m.named_parameters(false);
  const auto buffers = m.named_buffers(false);
  const auto* w = params.find("weight");
  const auto* s = buffers.find(kInt8ScaleName);
  if (!w || !s || w->scalar_type() != torch::kInt8) return {};
  return *s;
}

void to_dtype_keeping_int8(torch::nn::Module& m, torch::Dtype dtype) {
  torch::NoGradGuard ng;
  for_each_module(m, [&](torch::nn::Module& mod) {
    const bool quantised = int8_scale_of(mod).defined();
    auto convert = [&](torch::Tensor& t) {
      if (t.defined() && t.is_floating_point() && t.scalar_type() != dtype) t.set_data(t.to(dtype));
    };
    for (auto& p : mod.named_parameters(false)) convert(p.value());
    for (auto& b : mod.named_buffers(false))
      if (!(quantised && b.key() == kInt8ScaleName)) convert(b.value());
  });
}

int64_t tensor_bytes(const torch::nn::Module& m) {
  int64_t bytes = 0;
  for (const auto& p : m.parameters(true)) bytes += p.numel() * static_cast<int64_t>(p.element_size());
  for (const auto& b : m.buffers(true)) bytes += b.numel() * static_cast<int64_t>(b.element_size());
  return bytes;
}

}  // namespace diffuse::nn
