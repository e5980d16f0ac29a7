#include "core/json_file.h"

#include "core/atomic_file.h"
#include "core/error.h"

namespace diffuse {

nlohmann::json read_json_file(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": invalid JSON: " + e.what());
  }
}

}  // namespace diffuse
