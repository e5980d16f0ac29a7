#include "core/memory.h"

#include <c10/core/Allocator.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace diffuse {
namespace {

int64_t status_kb(const char* field) {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  int64_t kb = 0;
  const size_t n = std::strlen(field);
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, field, n) == 0 && line[n] == ':') {
      long long v = 0;
      if (std::sscanf(line + n + 1, "%lld", &v) == 1) kb = v;
      break;
    }
  }
  std::fclose(f);
  return kb;
}

// Large tensors get a mapping of their own, aligned to 2 MiB, marked for transparent huge pages and
// unmapped when freed: every tensor of 2 MiB or more while large frees go back to the system; in a
// training run, those above glibc's largest mmap threshold (32 MiB), which glibc would map and
// fault in 4 KiB at a time on every allocation whatever its settings. Every other request goes to
// the allocator it replaced.
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kGlibcMaxMmapThreshold = size_t{32} << 20;

class LargeBlockAllocator final : public c10::Allocator {
 public:
  // Takes ATen's CPU allocator's place, handing it what this one does not take. False where that
  // allocator lacks a raw deleter (blocks it gave could not be freed through this one).
  bool install() {
    base_ = c10::GetAllocator(c10::DeviceType::CPU);
    if (!base_ || !base_->raw_deleter()) return false;
    const char* e = std::getenv("DIFFUSE_HUGE_PAGES");  // "0": glibc's blocks only
    enabled_ = !(e && std::strcmp(e, "0") == 0);
    c10::SetAllocator(c10::DeviceType::CPU, this, /*priority=*/1);
    return true;
  }
  // Tensors of `from` bytes or more get mappings of their own; 0: none.
  void set_threshold(size_t from) { from_.store(enabled_ && base_ ? from : 0, std::memory_order_relaxed); }
  bool takes(size_t n) const {
    const size_t from = from_.load(std::memory_order_relaxed);
    return from && n >= from;
  }

  // No `override` here: libtorch 2.3 made allocate() non-const and added copy_data(); each
  // version overrides the ones it declares.
  c10::DataPtr allocate(size_t n) const {
    if (!takes(n)) return base_->allocate(n);
    void* p = map(n);
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DataPtr allocate(size_t n) { return static_cast<const LargeBlockAllocator*>(this)->allocate(n); }
  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }
  // raw_allocate / raw_deallocate (oneDNN's buffers): ptr is its own context.
  c10::DeleterFnPtr raw_deleter() const { return &release; }

 private:
  static void* map(size_t n) {
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    const size_t len = (n + page - 1) / page * page;
    void* raw = ::mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    // Keep the 2 MiB-aligned part; unmap what lies before and after it.
    const auto begin = reinterpret_cast<uintptr_t>(raw), end = begin + len + kHugePage;
    const uintptr_t start = (begin + kHugePage - 1) / kHugePage * kHugePage;
    if (start > begin) ::munmap(raw, start - begin);
    if (end > start + len) ::munmap(reinterpret_cast<void*>(start + len), end - (start + len));
    void* p = reinterpret_cast<void*>(start);
    // Whole huge pages only: a partly used one at the end would count 2 MiB as resident.
    ::madvise(p, len / kHugePage * kHugePage, MADV_HUGEPAGE);
    std::lock_guard<std::mutex> lock(mutex());
    lengths().emplace(p, len);
    return p;
  }
  static void release(void* p) {
    size_t len = 0;
    {
      std::lock_guard<std::mutex> lock(mutex());
      auto it = lengths().find(p);
      if (it != lengths().end()) {
        len = it->second;
        lengths().erase(it);
      }
    }
    if (len)
      ::munmap(p, len);
    else
      instance().base_->raw_deleter()(p);  // raw_deallocate of a block the base allocator gave
  }
  // Never destroyed: tensors held by other static objects may be freed after this file's are gone.
  static std::mutex& mutex() {
    static auto* m = new std::mutex;
    return *m;
  }
  static std::unordered_map<void*, size_t>& lengths() {
    static auto* m = new std::unordered_map<void*, size_t>;
    return *m;
  }

 public:
  static LargeBlockAllocator& instance() {
    static LargeBlockAllocator a;
    return a;
  }

 private:
  c10::Allocator* base_ = nullptr;
  bool enabled_ = false;
  std::atomic<size_t> from_{0};
};

// ATen's default CPU allocator is registered by libc10's static initialisation, which runs before
// this library's, while no other thread allocates.
const bool kInstalled = LargeBlockAllocator::instance().install();

// One memory policy: from which size tensors get mappings of their own (0: none), and glibc's
// thresholds.
void set_policy(size_t own_mappings_from, int mmap_threshold, int trim_threshold) {
  LargeBlockAllocator::instance().set_threshold(own_mappings_from);
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, mmap_threshold);
  mallopt(M_TRIM_THRESHOLD, trim_threshold);
#else
  (void)mmap_threshold;
  (void)trim_threshold;
#endif
}

}  // namespace

int64_t current_rss_bytes() { return status_kb("VmRSS") * 1024; }
int64_t peak_rss_bytes() { return status_kb("VmHWM") * 1024; }

void return_large_frees_to_os() { set_policy(kHugePage, 128 * 1024, 128 * 1024); }
void reuse_large_frees() { set_policy(0, 32 * 1024 * 1024, 64 * 1024 * 1024); }
void keep_freed_blocks_for_reuse() { set_policy(kGlibcMaxMmapThreshold + 1, 32 * 1024 * 1024, 1024 * 1024 * 1024); }

bool large_tensors_get_huge_pages(size_t bytes) { return kInstalled && LargeBlockAllocator::instance().takes(bytes); }

}  // namespace diffuse
