#pragma once
// Helpers shared by the diffusers model loaders: typed config-key readers with error messages
// naming the model class, and weight-folder I/O (single or sharded safetensors).
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace diffuse::model_io {

// `_diffusers_version` written into the config.json of every saved model.
constexpr const char* kDiffusersVersion = "0.28.2";

// Reads JSON config keys of model class `cls`; a wrong type throws diffuse::Error
// "<cls> config: key 'k' must be ...". Missing keys leave the output unchanged; null
// resets optionals (and is rejected for non-optionals).
struct ConfigReader {
  const nlohmann::json& j;
  std::string cls;
  [[noreturn]] void type_error(const std::string& key, const std::string& expected) const;
  bool has(const char* key) const { return j.contains(key); }
  void read(const char* key, int64_t& out) const;
  void read(const char* key, double& out) const;
  void read(const char* key, bool& out) const;
  void read(const char* key, std::string& out) const;
  void read(const char* key, std::optional<int64_t>& out) const;
  void read(const char* key, std::optional<bool>& out) const;
  void read(const char* key, std::optional<double>& out) const;
  void read(const char* key, std::optional<std::string>& out) const;
  void read(const char* key, std::vector<int64_t>& out) const;
  void read(const char* key, std::vector<std::string>& out) const;
  void read(const char* key, std::optional<std::vector<double>>& out) const;
  // An integer, a [height, width] pair or null (-> empty).
  void read_size(const char* key, std::vector<int64_t>& out) const;
  // Rejects a "_class_name" other than `cls`.
  void check_class_name() const;
};

// Whether `v` is a JSON integer or an integral float; as_int converts such a value.
bool is_integral(const nlohmann::json& v);
int64_t as_int(const nlohmann::json& v);

// Integral doubles as JSON integers (1, not 1.0), like Python's defaults.
nlohmann::json number(double d);

// An optional as its value or JSON null.
template <typename T>
nlohmann::json nullable(const std::optional<T>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

// Parses `dir`/config.json (diffuse::Error naming the file on failure).
nlohmann::json read_config(const std::string& dir, const std::string& cls);

// Loads `dir`/diffusion_pytorch_model.safetensors or its sharded .index.json (a lone
// diffusion_pytorch_model.bin is rejected as unsupported).
std::map<std::string, torch::Tensor> load_weights(const std::string& dir, const std::string& cls);
// Same for another weights file name (transformers folders: "model.safetensors"; its sharded
// "<name>.index.json" and a pickle "<stem>.bin" are handled alike).
std::map<std::string, torch::Tensor> load_weights(const std::string& dir, const std::string& cls,
                                                  const std::string& weights_file);

// fp16 or bf16 when every floating-point tensor of `dir`/`weights_file` (a single file, or
// each shard of its .index.json) is stored in that one 16-bit dtype; nullopt otherwise or when the
// file is missing. Reads headers only.
std::optional<torch::Dtype> stored_half_dtype(const std::string& dir, const std::string& weights_file);

// Renames legacy attention keys (.query. .key. .value. .proj_attn.) under ".attentions." to
// to_q / to_k / to_v / to_out.0.
void convert_legacy_attention_keys(std::map<std::string, torch::Tensor>& sd);

// Writes config.json (2-space indented) and diffusion_pytorch_model.safetensors ({"format": "pt"}).
void save_folder(const std::string& dir, const nlohmann::json& config, const std::map<std::string, torch::Tensor>& sd);

}  // namespace diffuse::model_io
