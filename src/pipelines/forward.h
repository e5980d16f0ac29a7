#pragma once
// One forward pass of the network in a model folder, with inputs and outputs
// named as in the reference fixtures (sample, timestep, class_labels -> out; ...).
// Every network class registers here, so `diffuse forward` checks any of them.
#include <torch/torch.h>

#include <map>
#include <string>

namespace diffuse {

using TensorMap = std::map<std::string, torch::Tensor>;

// Reads `_class_name` (diffusers) or `architectures` (transformers: CLIPTextModel, input_ids
// [+ attention_mask] -> last_hidden_state, pooler_output, hidden_states.N;
// CLIPTextModelWithProjection: text_embeds instead of pooler_output; UNet2DConditionModel:
// sample, timestep, encoder_hidden_states [+ class_labels, encoder_attention_mask, and for SDXL's
// text_time UNets text_embeds + time_ids] -> out) from DIR/config.json
// and runs that network on the inputs it needs (other tensors are ignored). Throws diffuse::Error naming a missing
// input or unknown class.
// The network class a folder's config.json names (_class_name or architectures).
std::string network_class(const std::string& model_dir);
// Loads the network of a component folder (config parsed, every weight present with the shape the
// config implies) and returns "CLASS, N parameters"; throws diffuse::Error naming the problem.
std::string check_network_folder(const std::string& model_dir);

TensorMap run_forward(const std::string& model_dir, const TensorMap& inputs, torch::Device device = torch::kCPU);

}  // namespace diffuse
