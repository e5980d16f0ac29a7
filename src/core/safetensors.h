#pragma once
// safetensors reader and writer (https://github.com/huggingface/safetensors
// format): 8-byte little-endian header size N, N bytes of JSON, raw data.
// Reading is memory-mapped and validated strictly; writing is atomic.
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace diffuse::safetensors {

struct TensorInfo {
  std::string dtype;  // "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
};

class File {
 public:
  // Maps and validates `path`; throws diffuse::Error naming the file and the problem.
  static File open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return info_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return info_.count(name) != 0; }
  std::vector<std::string> names() const;

  // The tensor in its stored dtype. Shares the mapping (copy-on-write) when
  // the data is aligned; throws diffuse::Error if `name` is absent.
  torch::Tensor get(const std::string& name) const;
  // All tensors.
  std::map<std::string, torch::Tensor> load_all() const;

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<Mapping> map_;
  uint64_t data_offset_ = 0;
  std::map<std::string, TensorInfo> info_;
  std::map<std::string, std::string> metadata_;
};

// Loads every tensor of a file.
std::map<std::string, torch::Tensor> load(const std::string& path);

// Serialises tensors (made contiguous, moved to CPU) into safetensors bytes.
std::string serialize(const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Writes a file atomically (temporary file, fsync, rename).
void save(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata = {});

// dtype helpers
std::string dtype_name(torch::ScalarType t);        // throws for types safetensors lacks
torch::ScalarType scalar_type(const std::string&);  // throws diffuse::Error for unknown names
size_t dtype_size(const std::string& dtype);        // 0 for unknown

}  // namespace diffuse::safetensors
