#include "train/checkpoint.h"

#include <filesystem>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "nn/state_dict.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {
std::string resolve(const std::string& dir) {
  if (fs::exists(dir + "/state.json")) return dir;
  if (fs::exists(dir + ".old/state.json")) return dir + ".old";
  throw Error(dir + ": no checkpoint to resume from (state.json not found)");
}
}  // namespace

bool has_checkpoint(const std::string& dir) {
  if (fs::exists(dir + "/state.json")) return true;
  // A save killed between its two renames leaves the new checkpoint complete in dir.tmp (its
  // state.json is written last) and the previous one in dir.old: move the newest into place.
  for (const std::string& other : {dir + ".tmp", dir + ".old"})
    if (fs::exists(other + "/state.json")) {
      remove_tree(dir);
      fs::rename(other, dir);
      return true;
    }
  return false;
}

void save_checkpoint(const std::string& dir, const CheckpointState& st, torch::nn::Module& model,
                     torch::nn::Module& ema, const AdamW& opt, const CheckpointExtras& extras) {
  const std::string tmp = dir + ".tmp";
  remove_tree(tmp);
  fs::create_directories(tmp);
  safetensors::save(tmp + "/model.safetensors", nn::state_dict(model), {{"format", "pt"}});
  safetensors::save(tmp + "/ema.safetensors", nn::state_dict(ema), {{"format", "pt"}});
  safetensors::save(tmp + "/optimizer.safetensors", opt.state(), {{"steps", std::to_string(opt.steps())}});
  for (const auto& [name, tensors] : extras) safetensors::save(tmp + "/" + name + ".safetensors", tensors, {});
  nlohmann::json j = {{"step", st.step},
                      {"smooth_loss", st.smooth_loss},
                      {"seconds", st.seconds},
                      {"optimizer_steps", opt.steps()},
                      {"options", st.options}};
  write_file_atomically(tmp + "/state.json", j.dump(2) + "\n");
  // Swap: dir -> dir.old, tmp -> dir, drop dir.old.
  remove_tree(dir + ".old");
  if (fs::exists(dir)) fs::rename(dir, dir + ".old");
  fs::rename(tmp, dir);
  remove_tree(dir + ".old");
}

CheckpointState read_checkpoint_state(const std::string& dir) {
  std::string d = resolve(dir);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(d + "/state.json"));
    CheckpointState st;
    st.step = j.at("step").get<int64_t>();
    st.smooth_loss = j.at("smooth_loss").is_null() ? 0.0 : j.at("smooth_loss").get<double>();
    st.seconds = j.value("seconds", 0.0);
    st.options = j.at("options");
    return st;
  } catch (const nlohmann::json::exception& e) {
    throw Error(d + "/state.json: " + e.what());
  }
}

void load_checkpoint(const std::string& dir, const CheckpointState& st, torch::nn::Module& model,
                     torch::nn::Module& ema, AdamW& opt) {
  std::string d = resolve(dir);
  nn::load_state_dict(model, safetensors::load(d + "/model.safetensors"), d + "/model.safetensors");
  nn::load_state_dict(ema, safetensors::load(d + "/ema.safetensors"), d + "/ema.safetensors");
  auto f = safetensors::File::open(d + "/optimizer.safetensors");
  int64_t steps = st.step;
  auto it = f.metadata().find("steps");
  if (it != f.metadata().end()) steps = std::stoll(it->second);
  opt.load_state(f.load_all(), steps, d + "/optimizer.safetensors");
}

std::map<std::string, torch::Tensor> load_checkpoint_extra(const std::string& dir, const std::string& name) {
  std::string d = resolve(dir);
  return safetensors::load(d + "/" + name + ".safetensors");
}

}  // namespace diffuse
