#pragma once
// The one exception type diffuse throws for bad input. Its message names the
// file or field at fault; the CLI prints it and exits non-zero.
#include <stdexcept>
#include <string>

namespace diffuse {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace diffuse
