#include "core/parallel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "core/runtime.h"

namespace diffuse {

void parallel_chunks(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f, int threads) {
  if (n <= 0) return;
  if (threads <= 0) threads = at::get_num_threads();
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = std::min<int64_t>(threads, (n + grain - 1) / grain);
  if (chunks <= 1) {
    f(0, n);
    return;
  }
  const int64_t size = (n + chunks - 1) / chunks;
  std::mutex mu;
  std::exception_ptr first;
  auto run = [&](int64_t c) {
    const int64_t begin = c * size, end = std::min(n, begin + size);
    if (begin >= end) return;
    try {
      f(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!first) first = std::current_exception();
    }
  };
  std::vector<std::thread> helpers;
  helpers.reserve(static_cast<size_t>(chunks - 1));
  for (int64_t c = 1; c < chunks; ++c)
    helpers.emplace_back([&run, c] {
      use_one_thread_here();
      run(c);
    });
  {
    OneThreadHere alone;
    run(0);
  }
  for (auto& t : helpers) t.join();
  if (first) std::rethrow_exception(first);
}

}  // namespace diffuse
