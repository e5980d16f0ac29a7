#pragma once
// Base64 (RFC 4648, standard alphabet with padding), as JSON APIs carry images.
#include <string>

namespace diffuse {

std::string base64_encode(const std::string& bytes);
// Accepts a bare base64 string or a data URL ("data:image/png;base64,..."); whitespace is
// skipped. Throws diffuse::Error naming `what` on any other character or a bad length.
std::string base64_decode(const std::string& text, const std::string& what);

}  // namespace diffuse
