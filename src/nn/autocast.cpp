#include "nn/autocast.h"

#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace diffuse::nn {

namespace {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool is_enabled(c10::DeviceType t) { return at::autocast::is_autocast_enabled(t); }
void set_enabled(c10::DeviceType t, bool on) {
  at::autocast::set_autocast_dtype(t, at::kBFloat16);
  at::autocast::set_autocast_enabled(t, on);
}
#else
bool is_enabled(c10::DeviceType t) {
  return t == c10::DeviceType::CPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
}
void set_enabled(c10::DeviceType t, bool on) {
  if (t == c10::DeviceType::CPU) {
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(on);
  } else {
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(on);
  }
}
#endif

#if TORCH_VERSION_MAJOR < 2
// libtorch 1.13's CPU autocast passes bf16 activations with fp32 affine parameters to
// group_norm, which rejects mixed dtypes; run it in fp32 instead, as CUDA autocast does.
at::Tensor group_norm_fp32(const at::Tensor& input, int64_t groups, const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& bias, double eps, bool cudnn) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  auto f32 = [](const c10::optional<at::Tensor>& t) -> c10::optional<at::Tensor> {
    if (!t.has_value() || !t->defined()) return t;
    return t->to(at::kFloat);
  };
  return at::group_norm(input.to(at::kFloat), groups, f32(weight), f32(bias), eps, cudnn);
}

// Likewise layer_norm of bf16 activations with fp32 weights (trained fp32 weights under bf16
// autocast): computed in fp32. Matching dtypes go through unchanged.
at::Tensor layer_norm_mixed(const at::Tensor& input, at::IntArrayRef shape, const c10::optional<at::Tensor>& weight,
                            const c10::optional<at::Tensor>& bias, double eps, bool cudnn) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const bool mixed = (weight.has_value() && weight->defined() && weight->scalar_type() != input.scalar_type()) ||
                     (bias.has_value() && bias->defined() && bias->scalar_type() != input.scalar_type());
  if (!mixed) return at::layer_norm(input, shape, weight, bias, eps, cudnn);
  auto f32 = [](const c10::optional<at::Tensor>& t) -> c10::optional<at::Tensor> {
    if (!t.has_value() || !t->defined()) return t;
    return t->to(at::kFloat);
  };
  return at::layer_norm(input.to(at::kFloat), shape, f32(weight), f32(bias), eps, cudnn);
}
#endif
}  // namespace

#if TORCH_VERSION_MAJOR < 2
TORCH_LIBRARY_IMPL(aten, AutocastCPU, m) {
  m.impl("group_norm", TORCH_FN(group_norm_fp32));
  m.impl("layer_norm", TORCH_FN(layer_norm_mixed));
}
#endif

bool autocast_enabled(torch::Device device) { return is_enabled(device.type()); }

AutocastGuard::AutocastGuard(torch::Device device, bool enabled) : device_(device), enabled_(enabled) {
  if (!enabled_) return;
  previous_ = is_enabled(device_.type());
  set_enabled(device_.type(), true);
}

AutocastGuard::~AutocastGuard() {
  if (!enabled_) return;
  set_enabled(device_.type(), previous_);
  if (!previous_) at::autocast::clear_cache();
}

}  // namespace diffuse::nn
