#include "nn/compute_dtype.h"

#include "nn/int8_weights.h"

namespace diffuse::nn {

ComputeDtypeGuard::ComputeDtypeGuard(std::initializer_list<torch::nn::Module*> modules, torch::Dtype compute,
                                     bool enabled, bool recurse)
    : ComputeDtypeGuard(std::vector<torch::nn::Module*>(modules), compute, enabled, recurse) {}

ComputeDtypeGuard::ComputeDtypeGuard(const std::vector<torch::nn::Module*>& modules, torch::Dtype compute, bool enabled,
                                     bool recurse) {
  if (!enabled) return;
  torch::NoGradGuard ng;
  auto convert = [&](torch::Tensor& t) {
    if (!t.defined() || !t.is_floating_point() || t.scalar_type() == compute) return;
    saved_.emplace_back(t, t.scalar_type());
    t.set_data(t.to(compute));
  };
  // One module's own tensors: an int8 weight is dequantised with its scale (which stays float32)
  // and its int8 tensor kept to be put back; the rest converted.
  auto visit = [&](torch::nn::Module& m) {
    const auto scale = int8_scale_of(m);
    for (auto& p : m.named_parameters(false)) {
      auto& t = p.value();
      if (scale.defined() && p.key() == "weight") {
        quantized_.emplace_back(t, t.variable_data());
        t.set_data(dequantize_int8(t, scale, compute));
      } else {
        convert(t);
      }
    }
    for (auto& b : m.named_buffers(false))
      if (!(scale.defined() && b.key() == kInt8ScaleName)) convert(b.value());
  };
  for (auto* m : modules) {
    if (!m) continue;
    visit(*m);
    if (recurse)
      for (const auto& c : m->modules(/*include_self=*/false)) visit(*c);
  }
}

ComputeDtypeGuard::~ComputeDtypeGuard() {
  torch::NoGradGuard ng;
  for (auto& [t, d] : saved_) {
    if (t.scalar_type() != d) t.set_data(t.to(d));
  }
  for (auto& [t, q] : quantized_) t.set_data(q);
}

namespace {
thread_local std::optional<torch::Dtype> thread_compute;
}

ComputeDtypeScope::ComputeDtypeScope(std::optional<torch::Dtype> compute) : previous_(thread_compute) {
  thread_compute = compute;
}

ComputeDtypeScope::~ComputeDtypeScope() { thread_compute = previous_; }

std::optional<torch::Dtype> ComputeDtypeScope::current() { return thread_compute; }

LayerUpcast::LayerUpcast(std::initializer_list<torch::nn::Module*> modules, bool recurse)
    : guard_(modules, thread_compute.value_or(torch::kFloat32), thread_compute.has_value(), recurse) {}

bool has_other_float_dtype(const torch::nn::Module& m, torch::Dtype d) {
  for (const auto& p : m.parameters(true))
    if (p.is_floating_point() && p.scalar_type() != d) return true;
  for (const auto& b : m.buffers(true))
    if (b.is_floating_point() && b.scalar_type() != d) return true;
  return false;
}

}  // namespace diffuse::nn
