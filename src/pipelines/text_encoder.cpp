#include "pipelines/text_encoder.h"

#include "core/error.h"
#include "nn/compute_dtype.h"

namespace diffuse {

torch::Tensor SDTextEncoder::encode_ids(const torch::Tensor& ids, int clip_skip, torch::Tensor* pooled) const {
  torch::NoGradGuard ng;
  CLIPTextModel m = model;
  const int64_t layers = m->config().num_hidden_layers;
  if (clip_skip < 0 || clip_skip >= layers)
    throw Error("clip_skip " + std::to_string(clip_skip) + ": must lie in [0, " + std::to_string(layers - 1) + "]");
  // 16-bit weights computed in a wider dtype are upcast one encoder layer at a time
  nn::ComputeDtypeScope layer_by_layer(compute_dtype);
  auto out = m->forward(ids.to(m->device(), torch::kInt64), clip_skip > 0 || penultimate);
  torch::Tensor h;
  if (penultimate)
    h = out.hidden_states[static_cast<size_t>(layers - 1 - clip_skip)];
  else
    h = clip_skip > 0 ? m->final_norm(out.hidden_states[static_cast<size_t>(layers - clip_skip)])
                      : out.last_hidden_state;
  if (pooled)
    *pooled = (out.text_embeds.defined() ? out.text_embeds : out.pooler_output).to(torch::kCPU, torch::kFloat32);
  return h.to(torch::kCPU, torch::kFloat32);
}

torch::Tensor SDTextEncoder::encode(const std::string& prompt, int clip_skip) const {
  auto ids = tokenizer.tokenize(prompt, model->config().max_position_embeddings, true);
  for (int64_t id : ids)
    if (id >= model->config().vocab_size)
      throw Error("prompt: token id " + std::to_string(id) + " is outside the text encoder's vocabulary (" +
                  std::to_string(model->config().vocab_size) + ")");
  return encode_ids(torch::tensor(ids, torch::kInt64).unsqueeze(0), clip_skip);
}

}  // namespace diffuse
