#pragma once
// The BLAS kernels behind libtorch's fp32 matrix multiplies.
//
// OpenBLAS built for several CPUs (Debian's DYNAMIC_ARCH build) picks its kernels when it loads,
// from the CPU's family and model. A CPU newer than the OpenBLAS release is not in its table, and
// OpenBLAS then falls back to its oldest x86-64 kernels (Prescott: SSE3, 4 floats per instruction),
// whatever the CPU can do. OpenBLAS 0.3.21 (Debian 12) does this on Intel Xeons of family 6
// model 207 (with AVX-512 and AMX): a 2048² sgemm ran at 82 GFLOP/s on 2 cores, against 406 with
// its AVX-512 kernels. The library's static initialisation therefore re-selects the kernels by
// the CPU's instruction sets when OpenBLAS fell back and OPENBLAS_CORETYPE is not set, as that
// variable would have done: AVX-512 (F, CD, BW, DQ, VL) gives SkylakeX, AVX2 with FMA Haswell.
// A BLAS other than OpenBLAS, or an OpenBLAS that knew the CPU, is left alone.
#include <string>

namespace diffuse {

struct BlasKernels {
  std::string detected;  // OpenBLAS's own choice ("Prescott", "Haswell", ...); empty: not OpenBLAS
  std::string in_use;    // the kernels in use now
};

// What OpenBLAS chose and what is in use (both empty when the BLAS is not OpenBLAS).
BlasKernels blas_kernels();

// The kernels to use instead of `detected` on a CPU with these instruction sets; empty to keep
// OpenBLAS's choice (it recognised the CPU, or the CPU has neither AVX2 nor AVX-512).
std::string blas_kernels_for(const std::string& detected, bool avx2_fma, bool avx512);

}  // namespace diffuse
