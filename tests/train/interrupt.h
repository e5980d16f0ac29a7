#pragma once
// Interrupting a training run in tests the way Ctrl-C does: a thread raises train_stop_flag()
// as soon as a file (the first checkpoint's state.json) appears.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "train/trainer.h"

namespace diffuse::test {

template <class F>
auto run_until_file_appears(const std::string& file, F&& run) {
  std::atomic<bool> done{false};
  std::thread stopper([&] {
    while (!done && !std::filesystem::exists(file)) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!done) train_stop_flag() = true;
  });
  struct Join {
    std::atomic<bool>& done;
    std::thread& t;
    ~Join() {
      done = true;
      t.join();
    }
  } join{done, stopper};
  return run();
}

}  // namespace diffuse::test
