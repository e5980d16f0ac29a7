#include "pipelines/random_checkpoint.h"

#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "core/strings.h"

namespace diffuse {

namespace {

struct Key {
  std::vector<int64_t> shape;
  std::string dtype;
};

std::map<std::string, Key> read_keys(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw Error(path + ": cannot open");
  std::map<std::string, Key> keys;
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    std::string name, shape, count, dtype;
    if (!std::getline(ls, name, '\t') || !std::getline(ls, shape, '\t') || !std::getline(ls, count, '\t') ||
        !std::getline(ls, dtype, '\t'))
      throw Error(path + ":" + std::to_string(lineno) + ": expected name, shape, count, dtype");
    Key k;
    k.shape = nlohmann::json::parse(shape).get<std::vector<int64_t>>();
    k.dtype = dtype;
    if (safetensors::dtype_size(dtype) == 0) throw Error(path + ":" + std::to_string(lineno) + ": dtype " + dtype);
    keys[name] = k;
  }
  if (keys.empty()) throw Error(path + ": no keys");
  return keys;
}

// The LDM DDPM buffers (ldm.models.diffusion.ddpm.register_schedule, linear_start 0.00085,
// linear_end 0.012, "linear" = scaled linear, v_posterior 0).
std::map<std::string, torch::Tensor> schedule_buffers() {
  auto o = torch::TensorOptions().dtype(torch::kFloat64);
  auto betas = torch::linspace(std::sqrt(0.00085), std::sqrt(0.012), 1000, o).pow(2);
  auto alphas = 1 - betas;
  auto ac = torch::cumprod(alphas, 0);
  auto ac_prev = torch::cat({torch::ones({1}, o), ac.slice(0, 0, 999)});
  auto post_var = betas * (1 - ac_prev) / (1 - ac);
  return {{"betas", betas},
          {"alphas_cumprod", ac},
          {"alphas_cumprod_prev", ac_prev},
          {"sqrt_alphas_cumprod", ac.sqrt()},
          {"sqrt_one_minus_alphas_cumprod", (1 - ac).sqrt()},
          {"log_one_minus_alphas_cumprod", (1 - ac).log()},
          {"sqrt_recip_alphas_cumprod", (1 / ac).sqrt()},
          {"sqrt_recipm1_alphas_cumprod", (1 / ac - 1).sqrt()},
          {"posterior_variance", post_var},
          {"posterior_log_variance_clipped", post_var.clamp_min(1e-20).log()},
          {"posterior_mean_coef1", betas * ac_prev.sqrt() / (1 - ac)},
          {"posterior_mean_coef2", (1 - ac_prev) * alphas.sqrt() / (1 - ac)}};
}

torch::Tensor make_tensor(const std::string& name, const Key& k, const std::map<std::string, torch::Tensor>& schedule) {
  const auto type = safetensors::scalar_type(k.dtype);
  torch::Tensor t;
  if (auto it = schedule.find(name); it != schedule.end()) {
    t = it->second;
  } else if (ends_with(name, "position_ids")) {
    t = torch::arange(k.shape.back(), torch::kInt64).reshape(k.shape);
  } else if (k.shape.size() == 1) {
    t = ends_with(name, ".weight") ? torch::ones(k.shape) : torch::zeros(k.shape);
  } else {
    int64_t fan_in = 1;
    for (size_t i = 1; i < k.shape.size(); ++i) fan_in *= k.shape[i];
    t = torch::randn(k.shape) / std::sqrt(static_cast<double>(fan_in));
  }
  if (t.sizes().vec() != k.shape) throw Error(name + ": made shape " + std::to_string(t.dim()) + "-D, wrong size");
  return t.to(type).contiguous();
}

}  // namespace

uint64_t write_random_checkpoint(const std::string& keys_tsv, const std::string& out, uint64_t seed) {
  const auto keys = read_keys(keys_tsv);
  torch::manual_seed(seed);
  const auto schedule = schedule_buffers();

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = {{"format", "pt"}, {"diffuse", "random-weight checkpoint"}};
  uint64_t offset = 0;
  for (const auto& [name, k] : keys) {
    uint64_t n = safetensors::dtype_size(k.dtype);
    for (auto d : k.shape) n *= static_cast<uint64_t>(d);
    header[name] = {{"dtype", k.dtype}, {"shape", k.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string hdr = header.dump();
  hdr.append((8 - hdr.size() % 8) % 8, ' ');

  write_atomically(out, [&](const std::string& tmp) {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) throw Error(tmp + ": cannot create");
    const uint64_t len = hdr.size();  // little-endian on every supported target
    f.write(reinterpret_cast<const char*>(&len), 8);
    f.write(hdr.data(), static_cast<std::streamsize>(hdr.size()));
    for (const auto& [name, k] : keys) {
      auto t = make_tensor(name, k, schedule);
      f.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
    }
    if (!f) throw Error(tmp + ": write failed");
  });
  return offset;
}

}  // namespace diffuse
