#include "nn/checkpoint.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/ivalue.h>

#include <optional>
#include <unordered_set>

#include "nn/compute_dtype.h"
#include "nn/linear.h"

namespace diffuse::nn {

namespace {

thread_local bool thread_checkpointing = false;

// The autocast state of the CPU and CUDA, captured in the forward pass and restored for the
// recomputation.
struct AutocastState {
  bool cpu = false, gpu = false;
  at::ScalarType cpu_dtype = at::kBFloat16, gpu_dtype = at::kHalf;

  static AutocastState current() {
    AutocastState s;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    s.cpu = at::autocast::is_autocast_enabled(c10::DeviceType::CPU);
    s.gpu = at::autocast::is_autocast_enabled(c10::DeviceType::CUDA);
    s.cpu_dtype = at::autocast::get_autocast_dtype(c10::DeviceType::CPU);
    s.gpu_dtype = at::autocast::get_autocast_dtype(c10::DeviceType::CUDA);
#else
    s.cpu = at::autocast::is_cpu_enabled();
    s.gpu = at::autocast::is_enabled();
    s.cpu_dtype = at::autocast::get_autocast_cpu_dtype();
    s.gpu_dtype = at::autocast::get_autocast_gpu_dtype();
#endif
    return s;
  }
  void apply() const {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_dtype(c10::DeviceType::CPU, cpu_dtype);
    at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, gpu_dtype);
    at::autocast::set_autocast_enabled(c10::DeviceType::CPU, cpu);
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, gpu);
#else
    at::autocast::set_autocast_cpu_dtype(cpu_dtype);
    at::autocast::set_autocast_gpu_dtype(gpu_dtype);
    at::autocast::set_cpu_enabled(cpu);
    at::autocast::set_enabled(gpu);
#endif
  }
};

class AutocastRestore {
 public:
  explicit AutocastRestore(const AutocastState& s) : previous_(AutocastState::current()) { s.apply(); }
  ~AutocastRestore() {
    previous_.apply();
    if (!previous_.cpu && !previous_.gpu) at::autocast::clear_cache();
  }
  AutocastRestore(const AutocastRestore&) = delete;
  AutocastRestore& operator=(const AutocastRestore&) = delete;

 private:
  AutocastState previous_;
};

// What the backward pass needs besides the saved tensors.
struct CheckpointState : torch::CustomClassHolder {
  BlockFn fn;
  std::vector<std::shared_ptr<torch::nn::Module>> modules;
  std::vector<bool> defined;     // per input of fn: defined (passed to the node) or not
  std::vector<bool> wants_grad;  // per tensor input of the node
  size_t activations = 0;        // the node's first tensor inputs are fn's defined inputs
  std::optional<torch::Dtype> compute;
  AutocastState autocast;

  std::vector<torch::Tensor> expand(const std::vector<torch::Tensor>& given) const {
    std::vector<torch::Tensor> all;
    size_t k = 0;
    for (bool d : defined) all.push_back(d ? given[k++] : torch::Tensor());
    return all;
  }
};

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::TensorList tensors,
                                                const c10::intrusive_ptr<CheckpointState>& state) {
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    ctx->save_for_backward(tensors.vec());
    std::vector<torch::Tensor> acts(tensors.begin(), tensors.begin() + static_cast<int64_t>(state->activations));
    return state->fn(state->expand(acts));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto state = c10::static_intrusive_pointer_cast<CheckpointState>(ctx->saved_data["state"].toCapsule());
    const auto saved = ctx->get_saved_variables();
    std::vector<torch::Tensor> acts, targets;
    std::vector<size_t> target_index;
    for (size_t i = 0; i < saved.size(); ++i) {
      torch::Tensor t = saved[i];
      if (i < state->activations) {
        t = t.detach().requires_grad_(state->wants_grad[i]);
        acts.push_back(t);
      }
      if (state->wants_grad[i]) {
        targets.push_back(t);
        target_index.push_back(i);
      }
    }
    torch::autograd::variable_list result(saved.size() + 1);
    if (targets.empty()) return result;
    torch::AutoGradMode grad_on(true);
    CheckpointScope no_nesting(false);
    ComputeDtypeScope scope(state->compute);
    AutocastRestore autocast(state->autocast);
    // 16-bit weights computed wide: the whole block stays wide until its backward is done (the
    // graph holds its weights), instead of layer by layer as in the forward pass.
    std::vector<torch::nn::Module*> modules;
    for (const auto& m : state->modules) modules.push_back(m.get());
    ComputeDtypeGuard wide(modules, state->compute.value_or(torch::kFloat32), state->compute.has_value());
    const auto outs = state->fn(state->expand(acts));
    std::vector<torch::Tensor> roots, root_grads;
    for (size_t i = 0; i < outs.size() && i < grads.size(); ++i) {
      if (!outs[i].defined() || !outs[i].requires_grad() || !grads[i].defined()) continue;
      roots.push_back(outs[i]);
      root_grads.push_back(grads[i]);
    }
    if (roots.empty()) return result;
    auto g = torch::autograd::grad(roots, targets, root_grads, /*retain_graph=*/false, /*create_graph=*/false,
                                   /*allow_unused=*/true);
    for (size_t k = 0; k < g.size(); ++k) result[target_index[k]] = g[k];
    return result;
  }
};

// The trainable tensors a module's forward reads: parameters that require grad, and Linear /
// Conv2d weights and biases pointed at other tensors that do, and Linear's bf16 copies (unique).
std::vector<torch::Tensor> trainable_tensors(const std::vector<std::shared_ptr<torch::nn::Module>>& modules) {
  std::vector<torch::Tensor> out;
  std::unordered_set<const void*> seen;
  auto add = [&](const torch::Tensor& t) {
    if (t.defined() && t.requires_grad() && seen.insert(t.unsafeGetTensorImpl()).second) out.push_back(t);
  };
  std::vector<std::shared_ptr<torch::nn::Module>> all;
  for (const auto& module : modules)
    for (const auto& m : module->modules(/*include_self=*/true)) all.push_back(m);
  for (const auto& m : all) {
    for (const auto& p : m->parameters(/*recurse=*/false)) add(p);
    if (auto* l = m->as<torch::nn::Linear>()) {
      add(l->weight);
      add(l->bias);
      if (auto* copies = dynamic_cast<LinearImpl*>(l)) {  // bf16 weights used under autocast
        add(copies->compute_weight);
        add(copies->compute_bias);
      }
    } else if (auto* c = m->as<torch::nn::Conv2d>()) {
      add(c->weight);
      add(c->bias);
    }
  }
  return out;
}

}  // namespace

CheckpointScope::CheckpointScope(bool enabled) : previous_(thread_checkpointing) { thread_checkpointing = enabled; }

CheckpointScope::~CheckpointScope() { thread_checkpointing = previous_; }

bool CheckpointScope::active() { return thread_checkpointing && torch::GradMode::is_enabled(); }

std::vector<torch::Tensor> checkpoint(const std::vector<torch::nn::Module*>& modules, const BlockFn& fn,
                                      const std::vector<torch::Tensor>& inputs) {
  auto state = c10::make_intrusive<CheckpointState>();
  state->fn = fn;
  for (auto* m : modules)
    if (m) state->modules.push_back(m->shared_from_this());
  state->compute = ComputeDtypeScope::current();
  state->autocast = AutocastState::current();
  std::vector<torch::Tensor> tensors;
  for (const auto& x : inputs) {
    state->defined.push_back(x.defined());
    if (x.defined()) tensors.push_back(x);
  }
  state->activations = tensors.size();
  for (const auto& t : trainable_tensors(state->modules)) tensors.push_back(t);
  for (const auto& t : tensors) state->wants_grad.push_back(t.requires_grad());
  return CheckpointFunction::apply(at::TensorList(tensors), state);
}

std::vector<torch::Tensor> maybe_checkpoint(const std::vector<torch::nn::Module*>& modules, const BlockFn& fn,
                                            const std::vector<torch::Tensor>& inputs) {
  if (CheckpointScope::active()) return checkpoint(modules, fn, inputs);
  return fn(inputs);
}

}  // namespace diffuse::nn
