#pragma once
// Reading JSON files with errors that name the file.
#include <nlohmann/json.hpp>
#include <string>

namespace diffuse {

// Parses the file at `path`; diffuse::Error "<path>: ..." when it is missing or not valid JSON.
nlohmann::json read_json_file(const std::string& path);

}  // namespace diffuse
