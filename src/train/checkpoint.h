#pragma once
// Training checkpoints: a folder with state.json, model.safetensors (raw weights),
// ema.safetensors and optimizer.safetensors. A new checkpoint is written beside the
// old one and swapped in by rename, so a complete checkpoint exists at every moment.
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "models/unet2d.h"
#include "train/adamw.h"

namespace diffuse {

struct CheckpointState {
  int64_t step = 0;
  double smooth_loss = 0;
  double seconds = 0;      // accumulated training time
  nlohmann::json options;  // the run's options (checked on resume)
};

// Further tensors a trainer keeps (e.g. a discriminator and its optimizer): name -> tensors,
// written as "<name>.safetensors" inside the same atomically swapped folder.
using CheckpointExtras = std::map<std::string, std::map<std::string, torch::Tensor>>;

// Whether `dir` holds a checkpoint; one that a crash during a save left in dir.tmp or dir.old is
// moved back into `dir` first.
bool has_checkpoint(const std::string& dir);

void save_checkpoint(const std::string& dir, const CheckpointState& st, torch::nn::Module& model,
                     torch::nn::Module& ema, const AdamW& opt, const CheckpointExtras& extras = {});
// Reads state.json (falls back to the previous checkpoint if a swap was interrupted).
CheckpointState read_checkpoint_state(const std::string& dir);
void load_checkpoint(const std::string& dir, const CheckpointState& st, torch::nn::Module& model,
                     torch::nn::Module& ema, AdamW& opt);
// One of the extras written by save_checkpoint.
std::map<std::string, torch::Tensor> load_checkpoint_extra(const std::string& dir, const std::string& name);

}  // namespace diffuse
