#include "pipelines/textual_inversion.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/safetensors.h"
#include "pipelines/sd_pipeline.h"
#include "pipelines/text_encoder.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {

// Adds `vectors` [n, hidden] as the embedding of `token` to one text encoder and its tokenizer.
void add_embedding_rows(SDTextEncoder& te, torch::Tensor vectors, const std::string& token, const std::string& path) {
  if (vectors.dim() == 1) vectors = vectors.unsqueeze(0);
  const int64_t hidden = te.model->config().hidden_size;
  if (vectors.dim() != 2 || vectors.size(1) != hidden || vectors.size(0) == 0)
    throw Error(path + ": embedding of shape " + c10::str(vectors.sizes()) + " does not fit this text encoder (width " +
                std::to_string(hidden) + ")");
  if (te.tokenizer.token_id(token) >= 0)
    throw Error(path + ": trigger '" + token + "' is already a token of the tokenizer");
  if (te.compute_dtype) {  // 16-bit text encoder computed in fp32: keep the new vectors exact
    torch::NoGradGuard ng;
    auto& w = te.model->token_embedding->weight;
    if (w.scalar_type() != *te.compute_dtype) w.set_data(w.to(*te.compute_dtype));
  }
  const int64_t first = te.model->add_token_embeddings(vectors.to(torch::kFloat32));
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < vectors.size(0); ++i) ids.push_back(first + i);
  te.tokenizer.add_token(token, ids);
}

}  // namespace

std::string load_embedding(SDPipeline& pipe, const std::string& path, const std::string& trigger) {
  if (!pipe.has_text_encoder()) throw Error("embeddings need the text encoder (drop prompt_embeds)");
  if (!pipe.is_xl()) return load_embedding(*pipe.text, path, trigger);
  if (!fs::is_regular_file(path)) throw Error("embeddings " + path + ": no such file");
  if (fs::path(path).extension() != ".safetensors")
    throw Error("embeddings " + path + ": only .safetensors embeddings are read");
  const auto tensors = safetensors::load(path);
  if (!tensors.count("clip_g") || (pipe.text && !tensors.count("clip_l"))) {
    std::string names;
    for (const auto& [k, v] : tensors) names += (names.empty() ? "" : ", ") + k;
    throw Error(path + ": not a textual-inversion embedding for SDXL (expected 'clip_l' and 'clip_g'; has " + names +
                ")");
  }
  const std::string token = trigger.empty() ? fs::path(path).stem().string() : trigger;
  const auto& g = tensors.at("clip_g");
  if (pipe.text) {
    const auto& l = tensors.at("clip_l");
    if (l.dim() != g.dim() || l.size(0) != g.size(0))
      throw Error(path + ": clip_l " + c10::str(l.sizes()) + " and clip_g " + c10::str(g.sizes()) +
                  " hold different numbers of vectors");
    if (pipe.text_2->tokenizer.token_id(token) >= 0)
      throw Error(path + ": trigger '" + token + "' is already a token of the tokenizer");
    add_embedding_rows(*pipe.text, l, token, path + " (clip_l)");
  }
  add_embedding_rows(*pipe.text_2, g, token, path + " (clip_g)");
  return token;
}

std::vector<std::string> load_embeddings_for(SDPipeline& pipe, const std::string& dir,
                                             const std::vector<std::string>& texts) {
  if (!pipe.has_text_encoder()) throw Error("embeddings_dir: embeddings need the text encoder (drop prompt_embeds)");
  if (!pipe.is_xl()) return load_embeddings_for(*pipe.text, dir, texts);
  if (!fs::is_directory(dir)) throw Error("embeddings_dir " + dir + ": no such folder");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::vector<std::string> loaded;
  for (const auto& f : files) {
    const std::string name = f.stem().string();
    bool used = false;
    for (const auto& t : texts) used = used || t.find(name) != std::string::npos;
    if (!used || pipe.text_2->tokenizer.token_id(name) >= 0) continue;
    loaded.push_back(load_embedding(pipe, f.string(), name));
  }
  return loaded;
}

std::string load_embedding(SDTextEncoder& te, const std::string& path, const std::string& trigger) {
  if (!fs::is_regular_file(path)) throw Error("embeddings " + path + ": no such file");
  if (fs::path(path).extension() != ".safetensors")
    throw Error("embeddings " + path + ": only .safetensors embeddings are read");
  const auto tensors = safetensors::load(path);
  std::string token = trigger;
  torch::Tensor vectors;
  if (tensors.count("emb_params")) {
    vectors = tensors.at("emb_params");
    if (token.empty()) token = fs::path(path).stem().string();
  } else if (tensors.size() == 1) {
    vectors = tensors.begin()->second;
    if (token.empty()) token = tensors.begin()->first;
  } else {
    std::string names;
    for (const auto& [k, v] : tensors) names += (names.empty() ? "" : ", ") + k;
    throw Error(path +
                ": not a textual-inversion embedding for SD 1.x / 2.x (expected 'emb_params' or one tensor; has " +
                names + ")");
  }
  add_embedding_rows(te, vectors, token, path);
  return token;
}

std::vector<std::string> load_embeddings_for(SDTextEncoder& te, const std::string& dir,
                                             const std::vector<std::string>& texts) {
  if (!fs::is_directory(dir)) throw Error("embeddings_dir " + dir + ": no such folder");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::vector<std::string> loaded;
  for (const auto& f : files) {
    const std::string name = f.stem().string();
    bool used = false;
    for (const auto& t : texts) used = used || t.find(name) != std::string::npos;
    if (!used || te.tokenizer.token_id(name) >= 0) continue;
    loaded.push_back(load_embedding(te, f.string(), name));
  }
  return loaded;
}

}  // namespace diffuse
