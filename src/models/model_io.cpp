#include "models/model_io.h"

#include <cmath>
#include <filesystem>
#include <set>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/safetensors.h"

namespace diffuse::model_io {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {
constexpr const char* kConfigFile = "config.json";
constexpr const char* kWeightsFile = "diffusion_pytorch_model.safetensors";
}  // namespace

bool is_integral(const json& v) {
  if (v.is_number_integer()) return true;
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  return std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9.0e15;
}
int64_t as_int(const json& v) {
  return v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(v.get<double>());
}

void ConfigReader::type_error(const std::string& key, const std::string& expected) const {
  throw Error(cls + " config: key '" + key + "' must be " + expected + ", got " + j.at(key).dump());
}
void ConfigReader::read(const char* key, int64_t& out) const {
  if (!has(key)) return;
  if (!is_integral(j.at(key))) type_error(key, "an integer");
  out = as_int(j.at(key));
}
void ConfigReader::read(const char* key, double& out) const {
  if (!has(key)) return;
  if (!j.at(key).is_number()) type_error(key, "a number");
  out = j.at(key).get<double>();
}
void ConfigReader::read(const char* key, bool& out) const {
  if (!has(key)) return;
  if (!j.at(key).is_boolean()) type_error(key, "a boolean");
  out = j.at(key).get<bool>();
}
void ConfigReader::read(const char* key, std::string& out) const {
  if (!has(key)) return;
  if (!j.at(key).is_string()) type_error(key, "a string");
  out = j.at(key).get<std::string>();
}
void ConfigReader::read(const char* key, std::optional<int64_t>& out) const {
  if (!has(key)) return;
  if (j.at(key).is_null()) {
    out.reset();
    return;
  }
  if (!is_integral(j.at(key))) type_error(key, "an integer or null");
  out = as_int(j.at(key));
}
void ConfigReader::read(const char* key, std::optional<bool>& out) const {
  if (!has(key)) return;
  if (j.at(key).is_null()) {
    out.reset();
    return;
  }
  if (!j.at(key).is_boolean()) type_error(key, "a boolean or null");
  out = j.at(key).get<bool>();
}
void ConfigReader::read(const char* key, std::optional<double>& out) const {
  if (!has(key)) return;
  if (j.at(key).is_null()) {
    out.reset();
    return;
  }
  if (!j.at(key).is_number()) type_error(key, "a number or null");
  out = j.at(key).get<double>();
}
void ConfigReader::read(const char* key, std::optional<std::string>& out) const {
  if (!has(key)) return;
  if (j.at(key).is_null()) {
    out.reset();
    return;
  }
  if (!j.at(key).is_string()) type_error(key, "a string or null");
  out = j.at(key).get<std::string>();
}
void ConfigReader::read(const char* key, std::vector<int64_t>& out) const {
  if (!has(key)) return;
  const auto& v = j.at(key);
  if (!v.is_array()) type_error(key, "a list of integers");
  std::vector<int64_t> r;
  for (const auto& e : v) {
    if (!is_integral(e)) type_error(key, "a list of integers");
    r.push_back(as_int(e));
  }
  out = r;
}
void ConfigReader::read(const char* key, std::vector<std::string>& out) const {
  if (!has(key)) return;
  const auto& v = j.at(key);
  if (!v.is_array()) type_error(key, "a list of strings");
  std::vector<std::string> r;
  for (const auto& e : v) {
    if (!e.is_string()) type_error(key, "a list of strings");
    r.push_back(e.get<std::string>());
  }
  out = r;
}
void ConfigReader::read(const char* key, std::optional<std::vector<double>>& out) const {
  if (!has(key)) return;
  const auto& v = j.at(key);
  if (v.is_null()) {
    out.reset();
    return;
  }
  if (!v.is_array()) type_error(key, "a list of numbers or null");
  std::vector<double> r;
  for (const auto& e : v) {
    if (!e.is_number()) type_error(key, "a list of numbers or null");
    r.push_back(e.get<double>());
  }
  out = r;
}

void ConfigReader::read_size(const char* key, std::vector<int64_t>& out) const {
  if (!has(key)) return;
  const auto& v = j.at(key);
  if (v.is_null())
    out.clear();
  else if (is_integral(v))
    out = {as_int(v)};
  else if (v.is_array() && v.size() == 2 && is_integral(v[0]) && is_integral(v[1]))
    out = {as_int(v[0]), as_int(v[1])};
  else
    type_error(key, "an integer, a [height, width] pair or null");
}
void ConfigReader::check_class_name() const {
  if (!has("_class_name")) return;
  std::string name;
  read("_class_name", name);
  if (name != cls) throw Error(cls + " config: _class_name is '" + name + "', expected " + cls);
}

json number(double d) {
  if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9.0e15) return static_cast<int64_t>(d);
  return d;
}

json read_config(const std::string& dir, const std::string& cls) {
  if (!fs::is_directory(dir)) throw Error(cls + " folder " + dir + " does not exist or is not a directory");
  const auto path = (fs::path(dir) / kConfigFile).string();
  if (!fs::exists(path)) throw Error(cls + " config " + path + " does not exist");
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw Error(path + ": invalid JSON: " + e.what());
  }
}

std::optional<torch::Dtype> stored_half_dtype(const std::string& dir, const std::string& weights_file) {
  std::vector<std::string> files;
  const auto single = (fs::path(dir) / weights_file).string();
  if (fs::exists(single)) {
    files.push_back(single);
  } else if (fs::exists(single + ".index.json")) {
    try {
      std::set<std::string> shards;
      for (const auto& [name, file] : json::parse(read_file(single + ".index.json")).at("weight_map").items())
        shards.insert((fs::path(dir) / file.get<std::string>()).string());
      files.assign(shards.begin(), shards.end());
    } catch (const std::exception&) {
      return std::nullopt;  // load_weights reports a bad index
    }
  }
  std::string common;
  for (const auto& f : files) {
    const auto file = safetensors::File::open(f);
    for (const auto& [name, info] : file.tensors()) {
      const bool is_float = info.dtype == "F64" || info.dtype == "F32" || info.dtype == "F16" || info.dtype == "BF16";
      if (!is_float) continue;
      if ((info.dtype != "F16" && info.dtype != "BF16") || (!common.empty() && common != info.dtype))
        return std::nullopt;
      common = info.dtype;
    }
  }
  if (common.empty()) return std::nullopt;
  return common == "F16" ? torch::kFloat16 : torch::kBFloat16;
}

std::map<std::string, torch::Tensor> load_weights(const std::string& dir, const std::string& cls) {
  return load_weights(dir, cls, kWeightsFile);
}

std::map<std::string, torch::Tensor> load_weights(const std::string& dir, const std::string& cls,
                                                  const std::string& weights_file) {
  const auto single = (fs::path(dir) / weights_file).string();
  if (fs::exists(single)) return safetensors::load(single);
  const auto index = single + ".index.json";
  if (fs::exists(index)) {
    json j;
    try {
      j = json::parse(read_file(index));
    } catch (const json::exception& e) {
      throw Error(index + ": invalid JSON: " + e.what());
    }
    if (!j.contains("weight_map") || !j.at("weight_map").is_object())
      throw Error(index + ": missing \"weight_map\" object");
    std::map<std::string, std::vector<std::string>> by_file;
    for (const auto& [name, file] : j.at("weight_map").items()) {
      if (!file.is_string()) throw Error(index + ": weight_map entry '" + name + "' is not a file name");
      by_file[file.get<std::string>()].push_back(name);
    }
    std::map<std::string, torch::Tensor> sd;
    for (const auto& [file, names] : by_file) {
      const auto path = (fs::path(dir) / file).string();
      if (!fs::exists(path)) throw Error(index + ": shard " + path + " does not exist");
      auto f = safetensors::File::open(path);
      for (const auto& name : names) {
        if (!f.contains(name)) throw Error(path + ": tensor '" + name + "' listed in " + index + " is missing");
        sd[name] = f.get(name);
      }
    }
    return sd;
  }
  const auto bin = (fs::path(dir) / (fs::path(weights_file).stem().string() + ".bin")).string();
  if (fs::exists(bin)) throw Error(bin + ": PyTorch pickle weights are not supported; convert them to " + weights_file);
  throw Error("no " + cls + " weights in " + dir + ": expected " + single);
}

void convert_legacy_attention_keys(std::map<std::string, torch::Tensor>& sd) {
  static const std::pair<const char*, const char*> kAttn[] = {
      {".query.", ".to_q."}, {".key.", ".to_k."}, {".value.", ".to_v."}, {".proj_attn.", ".to_out.0."}};
  std::vector<std::pair<std::string, std::string>> renames;
  for (const auto& [k, v] : sd) {
    if (k.find(".attentions.") == std::string::npos) continue;
    for (const auto& [from, to] : kAttn) {
      const auto pos = k.rfind(from);
      if (pos == std::string::npos) continue;
      auto nk = k.substr(0, pos) + to + k.substr(pos + std::string(from).size());
      if (!sd.count(nk)) renames.emplace_back(k, nk);
      break;
    }
  }
  for (const auto& [from, to] : renames) {
    sd[to] = sd.at(from);
    sd.erase(from);
  }
}

void save_folder(const std::string& dir, const json& config, const std::map<std::string, torch::Tensor>& sd) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create " + dir + ": " + ec.message());
  write_file_atomically((fs::path(dir) / kConfigFile).string(), config.dump(2) + "\n");
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& [k, v] : sd) tensors[k] = v.detach();
  safetensors::save((fs::path(dir) / kWeightsFile).string(), tensors, {{"format", "pt"}});
}

}  // namespace diffuse::model_io
