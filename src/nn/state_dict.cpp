#include "nn/state_dict.h"

#include <sstream>
#include <vector>

#include "core/error.h"

namespace diffuse::nn {

StateDict state_dict(const torch::nn::Module& m) {
  StateDict out;
  for (const auto& p : m.named_parameters(true)) out[p.key()] = p.value();
  for (const auto& b : m.named_buffers(true)) out[b.key()] = b.value();
  return out;
}

namespace {
std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

std::string list(const std::vector<std::string>& v, size_t limit = 20) {
  std::ostringstream o;
  for (size_t i = 0; i < v.size() && i < limit; ++i) o << "\n    " << v[i];
  if (v.size() > limit) o << "\n    ... (" << (v.size() - limit) << " more)";
  return o.str();
}
}  // namespace

void load_state_dict(torch::nn::Module& m, const StateDict& sd, const std::string& source) {
  StateDict own = state_dict(m);
  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& [k, v] : own) {
    auto it = sd.find(k);
    if (it == sd.end()) {
      missing.push_back(k);
    } else if (it->second.sizes() != v.sizes()) {
      mismatched.push_back(k + ": checkpoint " + shape_str(it->second.sizes()) + ", model " + shape_str(v.sizes()));
    }
  }
  for (const auto& [k, v] : sd)
    if (!own.count(k)) unexpected.push_back(k);
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::ostringstream msg;
    msg << source << ": weights do not match the model configuration";
    if (!missing.empty()) msg << "\n  missing keys (" << missing.size() << "):" << list(missing);
    if (!unexpected.empty()) msg << "\n  unexpected keys (" << unexpected.size() << "):" << list(unexpected);
    if (!mismatched.empty()) msg << "\n  shape mismatches (" << mismatched.size() << "):" << list(mismatched);
    throw Error(msg.str());
  }
  torch::NoGradGuard ng;
  for (auto& [k, v] : own) {
    const auto& src = sd.at(k);
    v.copy_(src);  // converts the dtype (and device) in one pass
  }
}

}  // namespace diffuse::nn
