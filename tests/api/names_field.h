#pragma once
// Test helper shared by the API tests: whether a list of field errors names `field`.
#include <string>
#include <vector>

#include "diffuse/error.h"

namespace diffuse::test {

inline bool names(const std::vector<FieldError>& e, const std::string& field) {
  for (const auto& x : e)
    if (x.field == field) return true;
  return false;
}

}  // namespace diffuse::test
