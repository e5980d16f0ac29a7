#pragma once
// Resident memory of this process, for progress and benchmark reports (Linux /proc; 0 elsewhere).
#include <cstddef>
#include <cstdint>

namespace diffuse {

// Current resident set size in bytes (VmRSS).
int64_t current_rss_bytes();
// Highest resident set size so far in bytes (VmHWM).
int64_t peak_rss_bytes();

// Serves every allocation of 128 KiB or more from its own mapping, so freed tensors go back to
// the system at once instead of staying in the heap (glibc otherwise raises this threshold up
// to 32 MiB as large blocks are freed, and a model whose weights are converted block by block
// would keep the freed copies resident). Tensors of 2 MiB or more get mappings aligned to 2 MiB
// and backed by transparent huge pages where the kernel offers them (`madvise` or `always` in
// /sys/kernel/mm/transparent_hugepage/enabled): a fresh block then costs one page fault per
// 2 MiB instead of one per 4 KiB (oneDNN reorders each convolution's weights into a fresh
// buffer on every call). Process-wide; glibc's part is a no-op outside glibc.
void return_large_frees_to_os();

// The opposite, for a phase that holds no weights converted block by block (the VAE decode after
// the UNet is released): blocks up to 32 MiB come from the heap and freed ones are reused rather
// than mapped, faulted in and unmapped again on every operation (oneDNN reorders each
// convolution's weights into a fresh buffer on every call). Process-wide; a no-op outside glibc.
void reuse_large_frees();

// For a training run: blocks up to 32 MiB come from the heap, and the heap keeps what is freed at
// its top (up to 1 GiB) instead of returning it, so each step's activations reuse the pages of the
// step before instead of faulting in fresh ones (glibc's default trims whatever lies free above
// twice its sliding mmap threshold). The peak is reached within every step and does not grow.
// Blocks above 32 MiB, which glibc maps and unmaps on every allocation whatever its settings, get
// huge-page mappings as under return_large_frees_to_os() (SD 1.5 LoRA at 512²: 17 M page faults
// per 5-step run -> 1.4 M). Process-wide; glibc's part is a no-op outside glibc.
void keep_freed_blocks_for_reuse();

// Whether tensors of `bytes` would now be given a huge-page mapping of their own (for tests).
bool large_tensors_get_huge_pages(size_t bytes);

}  // namespace diffuse
