#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/strings.h"

namespace diffuse::safetensors {

namespace {
// Largest header accepted (the reference implementation uses 100 MB).
constexpr uint64_t kMaxHeader = 100ull * 1024 * 1024;

struct DType {
  const char* name;
  torch::ScalarType type;
  size_t size;
};
const DType kTypes[] = {
    {"F64", torch::kFloat64, 8},   {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kInt64, 8},   {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2},     {"I8", torch::kInt8, 1},     {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
};
}  // namespace

size_t dtype_size(const std::string& dtype) {
  for (const auto& t : kTypes)
    if (dtype == t.name) return t.size;
  return 0;
}

torch::ScalarType scalar_type(const std::string& dtype) {
  for (const auto& t : kTypes)
    if (dtype == t.name) return t.type;
  throw Error("unsupported safetensors dtype '" + dtype + "'");
}

std::string dtype_name(torch::ScalarType type) {
  for (const auto& t : kTypes)
    if (type == t.type) return t.name;
  throw Error(std::string("dtype ") + c10::toString(type) + " cannot be stored in safetensors");
}

struct File::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr && size) ::munmap(addr, size);
  }
};

File File::open(const std::string& path) {
  File f;
  f.path_ = path;
  auto fail = [&](const std::string& why) -> Error { return Error(path + ": " + why); };

  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw fail(std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw fail("not a regular file");
  }
  auto map = std::make_shared<Mapping>();
  map->size = static_cast<size_t>(st.st_size);
  if (map->size < 8) {
    ::close(fd);
    throw fail("not a safetensors file (shorter than its 8-byte header length)");
  }
  // Private writable mapping: tensors may be modified in place without touching the file.
  map->addr = ::mmap(nullptr, map->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map->addr == MAP_FAILED) {
    map->addr = nullptr;
    throw fail(std::string("cannot map: ") + std::strerror(errno));
  }
  const auto* bytes = static_cast<const unsigned char*>(map->addr);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > kMaxHeader) throw fail("header length " + std::to_string(n) + " is absurd (limit 100 MB)");
  if (n > map->size - 8)
    throw fail("header length " + std::to_string(n) + " exceeds the file size " + std::to_string(map->size) +
               " (truncated file?)");
  std::string header(reinterpret_cast<const char*>(bytes) + 8, n);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const std::exception& e) {
    throw fail("header is not valid JSON: " + printable(e.what()));
  }
  if (!j.is_object()) throw fail("header is not a JSON object");

  f.data_offset_ = 8 + n;
  const uint64_t data_size = map->size - f.data_offset_;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw fail("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) throw fail("__metadata__['" + printable(m.key()) + "'] is not a string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& why) { return fail("tensor '" + printable(name) + "': " + why); };
    if (!v.is_object()) throw bad("entry is not an object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) throw bad("missing dtype");
    if (!v.contains("shape") || !v["shape"].is_array()) throw bad("missing shape");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      throw bad("missing data_offsets [begin, end]");
    TensorInfo info;
    info.dtype = v["dtype"].get<std::string>();
    size_t esize = dtype_size(info.dtype);
    if (esize == 0) throw bad("unsupported dtype '" + info.dtype + "'");
    uint64_t count = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) throw bad("shape entries must be non-negative integers");
      uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && count > (uint64_t(1) << 62) / dim) throw bad("shape is absurdly large");
      count *= dim;
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    for (const auto& o : v["data_offsets"])
      if (!o.is_number_unsigned()) throw bad("data_offsets must be non-negative integers");
    info.begin = v["data_offsets"][0].get<uint64_t>();
    info.end = v["data_offsets"][1].get<uint64_t>();
    if (info.end < info.begin) throw bad("data_offsets end precedes begin");
    if (info.end > data_size)
      throw bad("data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                "] out of range (data section is " + std::to_string(data_size) + " bytes; truncated file?)");
    if (info.end - info.begin != count * esize)
      throw bad("byte size " + std::to_string(info.end - info.begin) + " does not match shape and dtype (" +
                std::to_string(count * esize) + " bytes)");
    if (info.end > info.begin) ranges.emplace_back(info.begin, info.end);
    f.info_[name] = std::move(info);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) throw fail("tensor data ranges overlap");
  f.map_ = std::move(map);
  return f;
}

std::vector<std::string> File::names() const {
  std::vector<std::string> out;
  for (const auto& kv : info_) out.push_back(kv.first);
  return out;
}

torch::Tensor File::get(const std::string& name) const {
  auto it = info_.find(name);
  if (it == info_.end()) throw Error(path_ + ": no tensor named '" + printable(name) + "'");
  const TensorInfo& info = it->second;
  auto type = scalar_type(info.dtype);
  size_t esize = dtype_size(info.dtype);
  auto* base = static_cast<unsigned char*>(map_->addr) + data_offset_ + info.begin;
  auto opts = torch::TensorOptions().dtype(type);
  if (info.end == info.begin) return torch::empty(info.shape, opts);
  if (reinterpret_cast<uintptr_t>(base) % esize != 0) {
    // Misaligned data: copy byte-wise into an owned tensor.
    auto t = torch::empty(info.shape, opts);
    std::memcpy(t.data_ptr(), base, info.end - info.begin);
    return t;
  }
  auto keep = map_;
  return torch::from_blob(
      base, info.shape, [keep](void*) {}, opts);
}

std::map<std::string, torch::Tensor> File::load_all() const {
  std::map<std::string, torch::Tensor> out;
  for (const auto& kv : info_) out[kv.first] = get(kv.first);
  return out;
}

std::map<std::string, torch::Tensor> load(const std::string& path) { return File::open(path).load_all(); }

std::string serialize(const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Larger element types first keeps every tensor aligned to its element size.
  std::vector<std::pair<std::string, torch::Tensor>> order;
  for (const auto& kv : tensors) {
    if (kv.first == "__metadata__") throw Error("'__metadata__' cannot be used as a tensor name");
    order.emplace_back(kv.first, kv.second.detach().to(torch::kCPU).contiguous());
  }
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.second.element_size() > b.second.element_size(); });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : order) {
    uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8 != 0) h.push_back(' ');
  std::string out;
  out.reserve(8 + h.size() + offset);
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += h;
  for (const auto& [name, t] : order)
    out.append(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.numel()) * t.element_size());
  return out;
}

void save(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata) {
  write_file_atomically(path, serialize(tensors, metadata));
}

}  // namespace diffuse::safetensors
