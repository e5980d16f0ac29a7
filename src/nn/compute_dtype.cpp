#include "nn/compute_dtype.h"

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
  for (auto* m : modules) {
    if (!m) continue;
    for (auto& p : m->parameters(recurse)) convert(p);
    for (auto& b : m->buffers(recurse)) convert(b);
  }
}

ComputeDtypeGuard::~ComputeDtypeGuard() {
  torch::NoGradGuard ng;
  for (auto& [t, d] : saved_) {
    if (t.scalar_type() != d) t.set_data(t.to(d));
  }
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
