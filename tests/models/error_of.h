#pragma once
// Test helper shared by the model tests: the message of the diffuse::Error a call throws.
#include <functional>
#include <string>

#include "core/error.h"

namespace diffuse::test {

// f()'s diffuse::Error message, or "<no diffuse::Error>" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const diffuse::Error& e) {
    return e.what();
  }
  return "<no diffuse::Error>";
}

}  // namespace diffuse::test
