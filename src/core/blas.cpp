#include "core/blas.h"

#include <dlfcn.h>

#include <cstdlib>

namespace diffuse {

namespace {

using CoreName = char* (*)();
using Hook = void (*)();

CoreName openblas_corename() { return reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename")); }

#if defined(__x86_64__) || defined(__i386__)
bool cpu_has_avx2_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#else
bool cpu_has_avx2_fma() { return false; }
bool cpu_has_avx512() { return false; }
#endif

// Runs once, from the first call of kernels(): during static initialisation, before any thread
// or BLAS call.
BlasKernels select_kernels() {
  BlasKernels k;
  const CoreName name = openblas_corename();
  if (!name || !name()) return k;
  k.detected = k.in_use = name();
  if (std::getenv("OPENBLAS_CORETYPE")) return k;  // the user's choice
  const std::string better = blas_kernels_for(k.detected, cpu_has_avx2_fma(), cpu_has_avx512());
  const auto quit = reinterpret_cast<Hook>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit"));
  const auto init = reinterpret_cast<Hook>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init"));
  if (better.empty() || !quit || !init) return k;
  // gotoblas_dynamic_init reads OPENBLAS_CORETYPE; the variable is removed again afterwards so
  // that child processes make their own choice.
  setenv("OPENBLAS_CORETYPE", better.c_str(), 1);
  quit();
  init();
  unsetenv("OPENBLAS_CORETYPE");
  k.in_use = name();
  return k;
}

const BlasKernels& kernels() {
  static const BlasKernels k = select_kernels();
  return k;
}

}  // namespace

std::string blas_kernels_for(const std::string& detected, bool avx2_fma, bool avx512) {
  if (detected != "Prescott") return {};  // OpenBLAS's fallback for CPUs it does not know
  if (avx512) return "SkylakeX";
  if (avx2_fma) return "Haswell";
  return {};
}

BlasKernels blas_kernels() { return kernels(); }

}  // namespace diffuse

// Runs the selection during static initialisation. diffuse_core's link interface names this
// symbol as undefined, so that a program linking the static library keeps this file and its
// initialiser even when it calls nothing here.
extern "C" const bool diffuse_blas_kernels_selected = !diffuse::blas_kernels().in_use.empty();
