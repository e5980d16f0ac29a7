#pragma once
// Small string helpers that C++17's std::string lacks.
#include <string>

namespace diffuse {

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace diffuse
