#pragma once
// The web UI's files (src/server/ui), compiled into the binary by cmake/EmbedFiles.cmake.
#include <cstddef>

namespace diffuse::server {

struct UiAsset {
  const char* path;  // relative to src/server/ui, e.g. "app.js"
  const char* type;  // Content-Type
  const unsigned char* data;
  size_t size;
};

extern const UiAsset kUiAssets[];
extern const size_t kUiAssetCount;

}  // namespace diffuse::server
