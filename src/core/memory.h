#pragma once
// Resident memory of this process, for progress and benchmark reports (Linux /proc; 0 elsewhere).
#include <cstdint>

namespace diffuse {

// Current resident set size in bytes (VmRSS).
int64_t current_rss_bytes();
// Highest resident set size so far in bytes (VmHWM).
int64_t peak_rss_bytes();

// Serves every allocation of 128 KiB or more from its own mapping, so freed tensors go back to
// the system at once instead of staying in the heap (glibc otherwise raises this threshold up
// to 32 MiB as large blocks are freed, and a model whose weights are converted block by block
// would keep the freed copies resident). Process-wide; a no-op outside glibc.
void return_large_frees_to_os();

// The opposite, for a phase that holds no weights converted block by block (the VAE decode after
// the UNet is released): blocks up to 32 MiB come from the heap and freed ones are reused rather
// than mapped, faulted in and unmapped again on every operation (oneDNN reorders each
// convolution's weights into a fresh buffer on every call). Process-wide; a no-op outside glibc.
void reuse_large_frees();

}  // namespace diffuse
