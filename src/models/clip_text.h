#pragma once
// transformers CLIPTextModel (the Stable Diffusion text encoder): token + position embeddings,
// pre-norm transformer layers with causal self-attention (q/k/v/out_proj, layer_norm1/2, mlp.fc1/fc2,
// quick_gelu or gelu), final_layer_norm, and the pooled output at the end-of-text token. Same
// config.json keys and state-dict names as transformers (text_model.*). With the
// CLIPTextModelWithProjection architecture (SDXL's text_encoder_2, OpenCLIP ViT-bigG) it also
// holds text_projection (Linear hidden -> projection_dim, no bias) and returns text_embeds, the
// projected pooled output.
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nn/linear.h"

namespace diffuse {

// CLIPTextConfig keys with transformers defaults (dropout keys are ignored).
struct CLIPTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";  // quick_gelu | gelu | gelu_new | relu
  double layer_norm_eps = 1e-5;
  int64_t pad_token_id = 1;
  int64_t bos_token_id = 49406;
  int64_t eos_token_id = 49407;
  int64_t projection_dim = 512;
  // architectures ["CLIPTextModelWithProjection"]: text_projection and text_embeds.
  bool with_projection = false;

  // Accepts a transformers CLIPTextModel config (architectures ["CLIPTextModel"] or model_type
  // clip_text_model) or a CLIPModel config's "text_config"; wrong types throw diffuse::Error.
  static CLIPTextConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
  void validate() const;
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
};

struct CLIPTextOutput {
  torch::Tensor last_hidden_state;           // [B, T, hidden] after final_layer_norm
  torch::Tensor pooler_output;               // [B, hidden]: last_hidden_state at the end-of-text token
  std::vector<torch::Tensor> hidden_states;  // output_hidden_states: embeddings, then each layer (no final norm)
  torch::Tensor text_embeds;                 // [B, projection_dim] text_projection(pooler_output); with_projection only
};

namespace nn {

class CLIPAttentionImpl : public torch::nn::Module {
 public:
  CLIPAttentionImpl(int64_t hidden, int64_t heads);
  // x [B, T, C]; mask additive, broadcastable to [B, heads, T, T].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask);

  nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};

 private:
  int64_t heads_;
};
TORCH_MODULE(CLIPAttention);

class CLIPEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit CLIPEncoderLayerImpl(const CLIPTextConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask);

  CLIPAttention self_attn{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  std::shared_ptr<torch::nn::Module> mlp;  // mlp.fc1, mlp.fc2
  nn::Linear fc1{nullptr}, fc2{nullptr};

 private:
  std::string act_;
};
TORCH_MODULE(CLIPEncoderLayer);

}  // namespace nn

// Registers text_model.{embeddings.{token,position}_embedding, encoder.layers.N, final_layer_norm}
// and, with_projection, text_projection.
class CLIPTextModelImpl : public torch::nn::Module {
 public:
  explicit CLIPTextModelImpl(const CLIPTextConfig& config);

  // input_ids [B, T] int64 (T <= max_position_embeddings). attention_mask (optional, [B, T], 1 = keep)
  // is added to the causal mask as transformers does. hidden_states is filled only when
  // output_hidden_states (num_hidden_layers + 1 tensors).
  CLIPTextOutput forward(const torch::Tensor& input_ids, bool output_hidden_states = false,
                         const torch::Tensor& attention_mask = {});

  // Index of the pooled token per row: argmax(input_ids) when eos_token_id == 2 (configs from before
  // transformers 4.31, including every SD text encoder), else the first eos_token_id.
  torch::Tensor eos_positions(const torch::Tensor& input_ids) const;
  // final_layer_norm, for clip-skip (applied to an intermediate hidden state).
  torch::Tensor final_norm(const torch::Tensor& x);

  const CLIPTextConfig& config() const { return config_; }
  // Appends rows [n, hidden] to the token-embedding table (textual inversion); returns the first new id.
  int64_t add_token_embeddings(const torch::Tensor& rows);
  // Keeps the token-embedding rows `old_ids` (new id i = row old_ids[i]) as the whole vocabulary,
  // for a tokenizer cut down with CLIPTokenizer::reduced(); the bos/eos/pad ids follow their rows.
  void keep_token_embeddings(const std::vector<int64_t>& old_ids);
  torch::Dtype dtype() const;
  torch::Device device() const;

  std::shared_ptr<torch::nn::Module> text_model, embeddings, encoder;
  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<nn::CLIPEncoderLayer> layer_list;
  torch::nn::LayerNorm final_layer_norm{nullptr};
  nn::Linear text_projection{nullptr};  // with_projection only

 private:
  CLIPTextConfig config_;
};
TORCH_MODULE(CLIPTextModel);

// Loads a transformers text-encoder folder: config.json + model.safetensors (or sharded
// model.safetensors.index.json); strict state dict (text_model.embeddings.position_ids, a buffer
// in older files, is accepted and dropped). Weights converted to `dtype`; CPU, eval mode.
CLIPTextModel load_clip_text_model(const std::string& dir, torch::Dtype dtype = torch::kFloat);
// Builds the model from a config and a state dict already in memory (`source` names it in errors).
CLIPTextModel clip_text_model_from_state_dict(const CLIPTextConfig& config,
                                              const std::map<std::string, torch::Tensor>& sd, const std::string& source,
                                              torch::Dtype dtype = torch::kFloat);

}  // namespace diffuse
