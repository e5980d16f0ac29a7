#pragma once
// Work split over threads for loops that are not tensor kernels: decoding image files, rendering
// glyphs. ATen's at::parallel_for runs such loops serially in code built without OpenMP, and
// nested in a tensor kernel's threads it would oversubscribe the cores.
#include <cstdint>
#include <functional>

namespace diffuse {

// Calls f(begin, end) on contiguous chunks of [0, n), at least `grain` items each, from up to
// `threads` threads (<= 0: ATen's intra-op thread count), the calling thread among them. Each
// thread runs its tensor operations on itself alone (use_one_thread_here; the calling thread gets
// its count back afterwards). Every chunk runs; the first exception thrown is rethrown afterwards.
void parallel_chunks(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f, int threads = 0);

}  // namespace diffuse
