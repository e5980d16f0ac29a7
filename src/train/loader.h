#pragma once
// Deterministic, prefetching batch loader: the batch for a step depends only on
// (seed, step), so an interrupted run resumes with exactly the same data order.
// Batches are assembled on a background thread while the model trains.
//
// Data-parallel: with `world` processes, batch `step` of every process is its slice (rows
// rank * batch_size ...) of the global batch of world * batch_size rows, taken from one global
// permutation per epoch (flips drawn for the global batch too), so the processes together see
// exactly what one process with the global batch sees.
#include <torch/torch.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>

#include "train/dataset.h"

namespace diffuse {

struct Batch {
  int64_t step = 0;
  torch::Tensor images;          // float [B, C, H, W] in [-1, 1]
  torch::Tensor labels;          // int64 [B] (undefined for unlabelled data)
  std::vector<int64_t> indices;  // the dataset rows of the batch
};

class BatchLoader {
 public:
  // `flip`: random horizontal flips. Batches for steps first_step, first_step+1, ...
  BatchLoader(const Dataset& data, int batch_size, uint64_t seed, bool flip, int64_t first_step, int prefetch = 4,
              int rank = 0, int world = 1);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  Batch next();
  // The batch for any step, computed synchronously (same result as next() gives for that step).
  Batch make(int64_t step) const;

 private:
  std::vector<int64_t> permutation(int64_t epoch) const;
  void run();

  const Dataset& data_;
  int batch_size_;
  uint64_t seed_;
  bool flip_;
  int prefetch_;
  int rank_, world_;
  int64_t next_step_;
  std::deque<Batch> queue_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread worker_;
};

// A 64-bit mix of values (splitmix64), for deriving per-step seeds.
uint64_t mix_seed(uint64_t a, uint64_t b);

}  // namespace diffuse
