#pragma once
// Write-then-rename file output: readers never see a partial file.
#include <functional>
#include <string>

namespace diffuse {

// Calls `write(tmp_path)`, fsyncs the result, then renames it over `path`.
// If `write` throws, the temporary file is removed and nothing is left behind.
void write_atomically(const std::string& path, const std::function<void(const std::string& tmp_path)>& write);

// Writes `bytes` to `path` atomically.
void write_file_atomically(const std::string& path, const std::string& bytes);

// Removes a file or a directory tree (POSIX calls only); a missing path is not an error.
void remove_tree(const std::string& path);

// Reads a whole file; throws diffuse::Error naming the path.
std::string read_file(const std::string& path);

}  // namespace diffuse
