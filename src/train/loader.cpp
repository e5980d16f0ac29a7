#include "train/loader.h"

#include <random>

#include "core/runtime.h"

namespace diffuse {

uint64_t mix_seed(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

BatchLoader::BatchLoader(const Dataset& data, int batch_size, uint64_t seed, bool flip, int64_t first_step,
                         int prefetch, int rank, int world)
    : data_(data),
      batch_size_(batch_size),
      seed_(seed),
      flip_(flip),
      prefetch_(prefetch),
      rank_(rank),
      world_(world),
      next_step_(first_step) {
  worker_ = std::thread([this] { run(); });
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

std::vector<int64_t> BatchLoader::permutation(int64_t epoch) const {
  const int64_t n = data_.size();
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  std::mt19937_64 rng(mix_seed(seed_, static_cast<uint64_t>(epoch) + 0x5eed));
  for (int64_t i = n - 1; i > 0; --i) {  // Fisher-Yates with a portable draw
    int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

Batch BatchLoader::make(int64_t step) const {
  const int64_t n = data_.size();
  const int64_t global = static_cast<int64_t>(batch_size_) * world_, first = static_cast<int64_t>(rank_) * batch_size_;
  std::vector<int64_t> idx(static_cast<size_t>(batch_size_));
  int64_t cached_epoch = -1;
  std::vector<int64_t> perm;
  for (int j = 0; j < batch_size_; ++j) {
    int64_t g = step * global + first + j;
    int64_t epoch = g / n;
    if (epoch != cached_epoch) {
      perm = permutation(epoch);
      cached_epoch = epoch;
    }
    idx[static_cast<size_t>(j)] = perm[static_cast<size_t>(g % n)];
  }
  auto index = torch::tensor(idx, torch::kInt64);
  Batch b;
  b.step = step;
  // uint8 images map to [-1, 1]; float rows (e.g. latent posteriors) are taken as they are.
  b.images = data_.images.is_floating_point()
                 ? data_.images.index_select(0, index).to(torch::kFloat32)
                 : data_.images.index_select(0, index).to(torch::kFloat32).div_(127.5).sub_(1.0);
  if (flip_) {
    std::mt19937_64 rng(mix_seed(seed_ ^ 0xf11bull, static_cast<uint64_t>(step)));
    std::vector<int64_t> flips;
    for (int64_t j = 0; j < first + batch_size_; ++j)
      if ((rng() & 1) && j >= first) flips.push_back(j - first);
    if (!flips.empty()) {
      auto fi = torch::tensor(flips, torch::kInt64);
      b.images.index_copy_(0, fi, b.images.index_select(0, fi).flip({3}));
    }
  }
  if (data_.labelled()) b.labels = data_.labels.index_select(0, index);
  b.indices = std::move(idx);
  return b;
}

void BatchLoader::run() {
  use_one_thread_here();
  try {
    while (true) {
      int64_t step;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || static_cast<int>(queue_.size()) < prefetch_; });
        if (stop_) return;
        step = next_step_++;
      }
      Batch b = make(step);
      {
        std::lock_guard<std::mutex> lock(mu_);
        queue_.push_back(std::move(b));
      }
      cv_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::current_exception();
    cv_.notify_all();
  }
}

Batch BatchLoader::next() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !queue_.empty() || error_; });
  if (error_) std::rethrow_exception(error_);
  Batch b = std::move(queue_.front());
  queue_.pop_front();
  cv_.notify_all();
  return b;
}

}  // namespace diffuse
