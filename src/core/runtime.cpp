#include "core/runtime.h"

#include <thread>

#include "core/error.h"

namespace diffuse {

int set_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  return at::get_num_threads();
}

torch::Device parse_device(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  if (name == "cpu") return torch::Device(torch::kCPU);
  if (name.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available()) throw Error("device " + name + ": CUDA is not available in this build/machine");
    try {
      return torch::Device(name);
    } catch (const std::exception&) {
      throw Error("device " + name + ": invalid device");
    }
  }
  throw Error("device " + name + ": expected cpu, cuda, cuda:N or auto");
}

std::string runtime_summary() {
  std::string s = "torch " + std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                  std::to_string(TORCH_VERSION_PATCH) + ", " + std::to_string(at::get_num_threads()) + " threads";
  if (torch::cuda::is_available()) s += ", CUDA devices: " + std::to_string(torch::cuda::device_count());
  return s;
}

}  // namespace diffuse
