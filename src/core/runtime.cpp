#include "core/runtime.h"

#include <dlfcn.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "core/blas.h"
#include "core/error.h"

namespace diffuse {

int set_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  return at::get_num_threads();
}

namespace {
// omp_set_num_threads of the OpenMP runtime libtorch loaded (null in builds without OpenMP):
// looked up at run time so that the setting reaches the OpenMP that ATen uses.
void set_omp_threads_here(int n) {
  using SetThreads = void (*)(int);
  static const auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  if (set) set(n);
}
}  // namespace

void use_one_thread_here() {
  // ATen gives each thread its thread count on first use (the process-wide one); after that,
  // the OpenMP runtime's per-thread setting decides.
  at::get_num_threads();
  set_omp_threads_here(1);
}

OneThreadHere::OneThreadHere() : previous_(at::get_num_threads()) { set_omp_threads_here(1); }

OneThreadHere::~OneThreadHere() { set_omp_threads_here(previous_); }

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

bool cpuinfo_has_native_bf16(const std::string& cpuinfo) {
  std::istringstream in(cpuinfo);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') == std::string::npos ? line.size() : line.find(':') + 1));
    std::string w;
    while (words >> w)
      if (w == "avx512_bf16" || w == "amx_bf16") return true;
  }
  return false;
}

bool cpu_has_native_bf16() {
  static const bool native = [] {
    std::ifstream in("/proc/cpuinfo");
    std::stringstream text;
    text << in.rdbuf();
    return cpuinfo_has_native_bf16(text.str());
  }();
  return native;
}

std::string resolve_dtype(const std::string& dtype, const torch::Device& device, bool native_bf16) {
  if (dtype != "auto") return dtype;
  return device.is_cpu() && native_bf16 ? "bf16" : "fp32";
}

std::string resolve_dtype(const std::string& dtype, const torch::Device& device) {
  return resolve_dtype(dtype, device, dtype == "auto" && device.is_cpu() && cpu_has_native_bf16());
}

std::string runtime_summary() {
  std::string s = "torch " + std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                  std::to_string(TORCH_VERSION_PATCH) + ", " + std::to_string(at::get_num_threads()) + " threads";
  if (torch::cuda::is_available()) s += ", CUDA devices: " + std::to_string(torch::cuda::device_count());
  if (cpu_has_native_bf16()) s += ", native bf16";
  const BlasKernels blas = blas_kernels();
  if (!blas.in_use.empty()) {
    s += ", OpenBLAS " + blas.in_use;
    if (blas.in_use != blas.detected) s += " (its own choice: " + blas.detected + ")";
  }
  return s;
}

}  // namespace diffuse
