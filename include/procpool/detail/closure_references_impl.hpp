// procpool::detail: the definitions of closure_references.hpp's scan for references (the loaded
// modules' read-only segments, mincore): compiled in every file in header-only mode, once in
// <procpool/src.hpp> with PROCPOOL_SEPARATE_COMPILATION.
#pragma once

#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <mutex>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define PROCPOOL_DETAIL_ASAN_SHADOW 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PROCPOOL_DETAIL_ASAN_SHADOW 1
#endif
#endif
#if defined(PROCPOOL_DETAIL_ASAN_SHADOW) && !defined(__x86_64__)
#undef PROCPOOL_DETAIL_ASAN_SHADOW  // the shadow's extent below is x86-64's layout
#endif
#if defined(PROCPOOL_DETAIL_ASAN_SHADOW)
#include <sanitizer/asan_interface.h>
#endif

#include "closure_references.hpp"
#include "config.hpp"

namespace procpool::detail {

/// Whether a word lies in AddressSanitizer's shadow memory and the gap inside it: terabytes mapped
/// (partly PROT_NONE) where no object of the program ever lives. Without this, under ASan most pairs
/// of 32-bit numbers read as one word would land there and count as references.
[[nodiscard]] inline bool in_sanitizer_shadow([[maybe_unused]] std::uintptr_t word) noexcept {
#if defined(PROCPOOL_DETAIL_ASAN_SHADOW)
  struct Shadow {
    std::uintptr_t begin = 0;
    std::uintptr_t end = 0;
    Shadow() noexcept {
      std::size_t scale = 0;
      std::size_t offset = 0;
      __asan_get_shadow_mapping(&scale, &offset);
      // From the shadow of address 0 to the shadow of the last user address (47 bits).
      begin = offset;
      end = offset + ((std::uintptr_t{1} << 47) >> scale);
    }
  };
  static const Shadow shadow;
  return word >= shadow.begin && word < shadow.end;
#else
  return false;
#endif
}

/// The address ranges of the loaded modules' segments without write permission (code, read-only
/// data, the vDSO): what a pointer into them refers to is the same in the parent and in a worker
/// forked earlier. Segments made read-only after relocation (RELRO: .data.rel.ro, the GOT) are
/// PF_W in the program headers and stay out: treating them as changing costs only speed.
/// Rebuilt when dl_iterate_phdr's load or unload counters move, so that a library unloaded (and its
/// addresses reused by a writable mapping) is never taken for stable.
class ReadOnlySegments {
 public:
  /// The process-wide list. Never destroyed: a thread may still scan while statics are destroyed.
  static ReadOnlySegments& instance() noexcept {
    static ReadOnlySegments* const segments = new ReadOnlySegments;
    return *segments;
  }

  /// Holds the list current and locked for a sequence of lookups (one closure's words): the counters
  /// are read and, if they moved, the list rebuilt once per Lookup, not once per word.
  class Lookup {
   public:
    explicit Lookup(ReadOnlySegments& segments) noexcept : segments_(segments), lock_(segments.mutex_) {
      usable_ = segments_.refresh();
    }
    /// Whether `address` lies inside a read-only segment of a module loaded now.
    [[nodiscard]] bool contains(std::uintptr_t address) const noexcept {
      if (!usable_) return false;
      const std::vector<Range>& ranges = segments_.ranges_;
      // The first range starting above `address`; the one before it is the only candidate.
      auto it = std::upper_bound(ranges.begin(), ranges.end(), address,
                                 [](std::uintptr_t a, const Range& r) { return a < r.begin; });
      return it != ranges.begin() && address < std::prev(it)->end;
    }

   private:
    ReadOnlySegments& segments_;
    std::lock_guard<std::mutex> lock_;
    bool usable_ = false;
  };

 private:
  struct Range {
    std::uintptr_t begin;
    std::uintptr_t end;  // one past the segment's last byte
  };
  struct Counters {
    unsigned long long adds = 0;
    unsigned long long subs = 0;
    bool known = false;  // a C library without the counters: rebuild every time, never trust a cache
  };
  struct Collected {
    std::vector<Range>* ranges;
    Counters counters;
    bool failed = false;
  };

  ReadOnlySegments() = default;

  static void read_counters(const dl_phdr_info* info, std::size_t size, Counters& out) noexcept {
    if (size >= offsetof(dl_phdr_info, dlpi_subs) + sizeof(info->dlpi_subs)) {
      out.adds = info->dlpi_adds;
      out.subs = info->dlpi_subs;
      out.known = true;
    }
  }

  /// Brings the list up to date; false if it could not be built (then nothing counts as stable).
  /// Called with mutex_ held.
  bool refresh() noexcept {
    Counters now;
    // Every entry carries the same counters: the first one is enough.
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t size, void* data) noexcept -> int {
          read_counters(info, size, *static_cast<Counters*>(data));
          return 1;
        },
        &now);
    if (built_ && now.known && now.adds == counters_.adds && now.subs == counters_.subs) return true;

    built_ = false;
    ranges_.clear();
    Collected collected{&ranges_, {}, false};
    // Allocation happens under the loader's lock, as any dl_iterate_phdr user's may (the unwinder's).
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t size, void* data) noexcept -> int {
          auto& out = *static_cast<Collected*>(data);
          read_counters(info, size, out.counters);
          for (ElfW(Half) i = 0; i < info->dlpi_phnum; ++i) {
            const ElfW(Phdr)& ph = info->dlpi_phdr[i];
            if (ph.p_type != PT_LOAD || (ph.p_flags & PF_W) != 0 || ph.p_memsz == 0) continue;
            const std::uintptr_t begin = info->dlpi_addr + ph.p_vaddr;
            try {
              out.ranges->push_back(Range{begin, begin + ph.p_memsz});
            } catch (...) {
              out.failed = true;
              return 1;
            }
          }
          return 0;
        },
        &collected);
    if (collected.failed) {
      ranges_.clear();
      return false;
    }
    std::sort(ranges_.begin(), ranges_.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
    counters_ = collected.counters;
    built_ = counters_.known;  // without counters the next Lookup rebuilds: a stale list is unsafe
    return true;
  }

  std::mutex mutex_;
  std::vector<Range> ranges_;  // sorted by begin; segments never overlap
  Counters counters_;
  bool built_ = false;
};

/// Whether the page holding `address` is mapped in this process (with any protection). One
/// mincore call: ENOMEM is the kernel's "not mapped"; any other failure counts as mapped.
[[nodiscard]] inline bool is_mapped(std::uintptr_t page) noexcept {
  unsigned char resident = 0;
  if (::mincore(reinterpret_cast<void*>(page), 1, &resident) == 0) return true;
  return errno != ENOMEM;
}

[[nodiscard]] inline std::uintptr_t page_size() noexcept {
  static const std::uintptr_t size = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

PROCPOOL_DECL bool may_reference_changing_memory(const void* bytes, std::size_t size) noexcept {
  constexpr std::size_t word_size = sizeof(std::uintptr_t);
  if (size < word_size) return false;
  const auto* p = static_cast<const unsigned char*>(bytes);
  const std::uintptr_t page_mask = ~(page_size() - 1);

  std::uintptr_t candidates[16];  // bounded: larger closures are judged in several rounds
  std::size_t offset = 0;
  std::uintptr_t unmapped_page = 0;  // never a candidate's page: 0 is below 64 KiB
  while (offset + word_size <= size) {
    // Gather the words worth a lookup first, so that plain values never take the lock.
    std::size_t count = 0;
    for (; offset + word_size <= size && count < std::size(candidates); offset += word_size) {
      std::uintptr_t word;
      std::memcpy(&word, p + offset, word_size);  // the closure's bytes, never what they point at
      if (could_be_user_address(word) && !in_sanitizer_shadow(word)) candidates[count++] = word;
    }
    if (count == 0) continue;

    ReadOnlySegments::Lookup segments(ReadOnlySegments::instance());
    for (std::size_t i = 0; i < count; ++i) {
      std::uintptr_t address = candidates[i];
#if defined(__aarch64__)
      address &= (std::uintptr_t{1} << 56) - 1;  // the tag is no part of the address
#endif
      if (segments.contains(address)) continue;
      const std::uintptr_t page = address & page_mask;
      if (page == unmapped_page) continue;
      if (is_mapped(page)) return true;
      unmapped_page = page;
    }
  }
  return false;
}

}  // namespace procpool::detail

#undef PROCPOOL_DETAIL_ASAN_SHADOW
