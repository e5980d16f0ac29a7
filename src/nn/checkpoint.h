#pragma once
// Gradient checkpointing (torch.utils.checkpoint's reentrant variant, which libtorch's C++ API
// lacks): a block runs without autograd in the forward pass, keeping only its inputs, and is run
// again with autograd in the backward pass to get the gradients of its inputs and of the
// trainable tensors inside it. Activations are then held for one block at a time instead of for
// the whole model, for one more forward pass of compute.
//
// Trainable tensors inside the block are found on its modules: registered parameters that
// require grad, and the `weight` / `bias` of Linear and Conv2d layers that require grad (a LoRA
// network points those at a merged weight of the autograd graph; train/lora_network.h). They
// become inputs of the checkpoint's autograd node, so that gradients reach them even when no
// activation entering the block requires grad. The recomputation restores the forward's
// ComputeDtypeScope and autocast state; the blocks it is used on are deterministic (dropout off
// in eval mode or at p = 0), so the recomputed activations equal the first ones.
#include <torch/torch.h>

#include <functional>
#include <utility>
#include <vector>

namespace diffuse::nn {

using BlockFn = std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&)>;

// Whether blocks on this thread run through checkpoint() (set by a model's forward).
class CheckpointScope {
 public:
  explicit CheckpointScope(bool enabled);
  ~CheckpointScope();
  CheckpointScope(const CheckpointScope&) = delete;
  CheckpointScope& operator=(const CheckpointScope&) = delete;
  // True inside an enabled scope while grad mode is on.
  static bool active();

 private:
  bool previous_;
};

// fn(inputs) for the block made of `modules` (null entries skipped), checkpointed. Undefined
// inputs are passed through as undefined. `fn` must capture what it needs by value (it runs again
// during backward) and must return fresh tensors, not its inputs. Under a ComputeDtypeScope the
// recomputation and its backward run with the block's weights wide (ComputeDtypeGuard): 16-bit
// weights that layers upcast one at a time in the forward pass (LayerUpcast) can be trained
// through, since the backward pass then finds the wide weights it saved.
std::vector<torch::Tensor> checkpoint(const std::vector<torch::nn::Module*>& modules, const BlockFn& fn,
                                      const std::vector<torch::Tensor>& inputs);

// checkpoint() when CheckpointScope::active(), else plain fn(inputs).
std::vector<torch::Tensor> maybe_checkpoint(const std::vector<torch::nn::Module*>& modules, const BlockFn& fn,
                                            const std::vector<torch::Tensor>& inputs);

namespace detail {
template <class Block, size_t... I>
torch::Tensor forward_with(Block& block, const std::vector<torch::Tensor>& in, std::index_sequence<I...>) {
  return block->forward(in[I]...);
}
}  // namespace detail

// block->forward(x, extra...) (a module holder taking tensors, returning one), checkpointed
// when CheckpointScope::active().
template <class Block, class... T>
torch::Tensor checkpointed(const Block& block, const torch::Tensor& x, const T&... extra) {
  if (!CheckpointScope::active()) return block.ptr()->forward(x, extra...);
  Block b = block;
  auto fn = [b](const std::vector<torch::Tensor>& in) mutable {
    return std::vector<torch::Tensor>{detail::forward_with(b, in, std::index_sequence_for<torch::Tensor, T...>{})};
  };
  return checkpoint({block.ptr().get()}, fn, {x, extra...}).at(0);
}

// upsample->forward(x, size) (nn/sampling.h's Upsample2D), checkpointed when active.
template <class Up>
torch::Tensor checkpointed_upsample(const Up& upsample, const torch::Tensor& x, const std::vector<int64_t>& size) {
  if (!CheckpointScope::active()) return upsample.ptr()->forward(x, size);
  Up up = upsample;
  auto fn = [up, size](const std::vector<torch::Tensor>& in) mutable {
    return std::vector<torch::Tensor>{up->forward(in[0], size)};
  };
  return checkpoint({upsample.ptr().get()}, fn, {x}).at(0);
}

}  // namespace diffuse::nn
