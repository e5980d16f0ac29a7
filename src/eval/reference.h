#pragma once
// Real-data reference sets in a feature network's space, cached on disk.
// The cache file name carries a key over the feature network's weights, the dataset
// (name or path, sizes and modification times of its files) and the split, so a retrained
// classifier or changed data is never scored against stale statistics.
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>

#include "eval/classifier.h"
#include "eval/metrics.h"

namespace diffuse {

struct ReferenceSet {
  std::string data;        // dataset spec
  std::string split;       // "train" or "test"
  torch::Tensor features;  // float32 [N, D]
  torch::Tensor logits;    // float32 [N, K]
  torch::Tensor labels;    // int64 [N], mapped to the feature network's class ids (-1 unknown / unlabelled)
  FeatureStats stats;      // of all N features
  std::string key;         // cache key
  std::string cache_file;  // "" when not cached
  bool from_cache = false;

  int64_t size() const { return features.defined() ? features.size(0) : 0; }
};

// $DIFFUSE_CACHE_DIR, else $XDG_CACHE_HOME/diffuse, else ~/.cache/diffuse, else /tmp/diffuse-cache.
std::string default_cache_dir();

// The cache key for (feature network, dataset, split): 16 hex digits.
std::string reference_key(const FeatureNet& net, const std::string& data, const std::string& split);

// Embeds the split with `net`, or loads it from `cache_dir` ("" = no cache) when the key matches.
// `progress(done, total)` reports embedding progress (not called on a cache hit).
ReferenceSet reference_set(const FeatureNet& net, const std::string& data, const std::string& split,
                           const std::string& cache_dir = default_cache_dir(),
                           const std::function<void(int64_t, int64_t)>& progress = {});

// Just the statistics of the split (cached as above).
FeatureStats reference_stats(const FeatureNet& net, const std::string& data, const std::string& split = "train",
                             const std::string& cache_dir = default_cache_dir());

}  // namespace diffuse
