#pragma once
// Errors diffuse throws. Every message names the file or request field at fault.
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace diffuse {

// Bad input: a corrupt file, an invalid option, a request field out of range.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One problem with one field of a GenerationRequest ("steps", "init_image", ...).
struct FieldError {
  std::string field;
  std::string message;
};

// A request that failed validation; what() joins the problems as "field: message; ...".
struct RequestError : Error {
  std::vector<FieldError> errors;
  explicit RequestError(std::vector<FieldError> errs) : Error(join(errs)), errors(std::move(errs)) {}
  RequestError(const std::string& field, const std::string& message) : RequestError({FieldError{field, message}}) {}

 private:
  static std::string join(const std::vector<FieldError>& errs) {
    std::string s;
    for (const auto& e : errs) s += (s.empty() ? "" : "; ") + e.field + ": " + e.message;
    return s;
  }
};

// A generation stopped by its CancelToken.
struct Cancelled : Error {
  Cancelled() : Error("cancelled") {}
};

}  // namespace diffuse
