// procpool: a growable byte buffer for hot paths (encoding, pipe I/O).
#pragma once

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <span>
#include <utility>

namespace procpool::detail {

#if defined(__linux__)
/// madvise(advice) over the whole `unit`-sized, `unit`-aligned blocks inside [p, p + n).
inline void advise_whole_blocks(void* p, std::size_t n, std::uintptr_t unit, int advice) noexcept {
  const auto first = (reinterpret_cast<std::uintptr_t>(p) + unit - 1) & ~(unit - 1);
  const auto last = (reinterpret_cast<std::uintptr_t>(p) + n) & ~(unit - 1);
  if (last > first) (void)::madvise(reinterpret_cast<void*>(first), last - first, advice);
}
#endif

/// Bytes from which advise_huge_pages asks for huge pages: two of them at least.
inline constexpr std::size_t kHugePageAdviceBytes = std::size_t{4} << 20;

/// Asks Linux to back the 2 MiB-aligned part of [p, p + n) with transparent huge pages, before
/// the memory is first touched, where the system gives them only on request (THP mode "madvise",
/// as on the machine our benchmarks ran on). A vector of a million results then costs a handful
/// of page faults instead of one per 4 KiB page, and under a hypervisor those faults were most of
/// a map of small items. Where THP is off, or on other systems, nothing changes but the speed.
inline void advise_huge_pages(void* p, std::size_t n) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (n >= kHugePageAdviceBytes) advise_whole_blocks(p, n, std::uintptr_t{2} << 20, MADV_HUGEPAGE);
#else
  (void)p;
  (void)n;
#endif
}

/// Bytes from which prefault_for_write is worth its system call.
inline constexpr std::size_t kPrefaultBytes = std::size_t{64} << 10;

/// Asks the kernel to map the pages of [p, p + n) writable now, in one system call, before they
/// are filled (in huge pages where advise_huge_pages can have them). Freshly allocated memory
/// otherwise faults on first touch, once per 4 KiB page, and under a hypervisor each fault costs
/// microseconds: copying a megabyte into new memory is then several times slower than the copy
/// itself. Pages already mapped cost nothing; without the call (kernels before 5.14, other
/// systems) nothing changes but the speed.
inline void prefault_for_write(void* p, std::size_t n) noexcept {
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
  if (n < kPrefaultBytes) return;
  advise_huge_pages(p, n);
  static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  advise_whole_blocks(p, n, page, MADV_POPULATE_WRITE);
#else
  (void)p;
  (void)n;
#endif
}

/// A contiguous, growable byte buffer. Unlike std::vector<std::byte>, growing never zero-fills:
/// grow(n) and resize(n) hand out uninitialised bytes the caller is expected to overwrite.
/// Growth is amortised (capacity doubles). Movable, not copyable. Allocation failure throws std::bad_alloc.
class Buffer {
 public:
  Buffer() noexcept = default;
  explicit Buffer(std::size_t initial_capacity) { reserve(initial_capacity); }
  ~Buffer() { release(); }

  /// An empty buffer that writes into [storage, storage + capacity), memory it does not own (a
  /// lane of shared memory), for as long as that is enough. Growing beyond it moves the bytes to
  /// memory of the buffer's own, as growing always does; owns_storage() then says so.
  [[nodiscard]] static Buffer over(std::byte* storage, std::size_t capacity) noexcept {
    Buffer b;
    b.data_ = storage;
    b.capacity_ = capacity;
    b.owned_ = false;
    return b;
  }

  Buffer(Buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        capacity_(std::exchange(other.capacity_, 0)),
        owned_(std::exchange(other.owned_, true)) {}

  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      capacity_ = std::exchange(other.capacity_, 0);
      owned_ = std::exchange(other.owned_, true);
    }
    return *this;
  }

  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  /// Appends n uninitialised bytes and returns a pointer to the first of them.
  /// The pointer is valid until the next call that may reallocate (grow, append, reserve, resize).
  std::byte* grow(std::size_t n) {
    if (n > capacity_ - size_) [[unlikely]] {
      grow_for(n);
      prefault_for_write(data_ + size_, n);
    }
    std::byte* p = data_ + size_;
    size_ += n;
    return p;
  }

  /// Appends n bytes copied from p.
  void append(const void* p, std::size_t n) {
    if (n != 0) std::memcpy(grow(n), p, n);
  }

  [[nodiscard]] std::byte* data() noexcept { return data_; }
  [[nodiscard]] const std::byte* data() const noexcept { return data_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  /// False while the bytes are in the storage given to over().
  [[nodiscard]] bool owns_storage() const noexcept { return owned_; }
  [[nodiscard]] std::span<const std::byte> view() const noexcept { return {data_, size_}; }

  /// Drops the contents; keeps the capacity.
  void clear() noexcept { size_ = 0; }

  /// Ensures capacity() >= n (exactly n when it has to reallocate).
  void reserve(std::size_t n) {
    if (n > capacity_) reallocate(n);
  }

  /// Sets the size to n. Bytes added by growing are uninitialised.
  void resize(std::size_t n) {
    if (n > capacity_) grow_for(n - size_);
    size_ = n;
  }

  /// Drops the first n bytes (clamped to size()) and moves the rest to the front.
  void erase_front(std::size_t n) noexcept {
    if (n >= size_) {
      size_ = 0;
      return;
    }
    if (n == 0) return;
    std::memmove(data_, data_ + n, size_ - n);
    size_ -= n;
  }

 private:
  // Makes room for `extra` more bytes beyond size_, growing geometrically. Kept out of line: cold path.
  [[gnu::noinline]] void grow_for(std::size_t extra) {
    constexpr std::size_t max = std::numeric_limits<std::size_t>::max();
    if (extra > max - size_) throw std::bad_alloc();
    const std::size_t needed = size_ + extra;
    std::size_t target = capacity_ < max / 2 ? capacity_ * 2 : max;
    if (target < kMinCapacity) target = kMinCapacity;
    if (target < needed) target = needed;
    reallocate(target);
  }

  void reallocate(std::size_t new_capacity) {
    void* p = owned_ ? std::realloc(data_, new_capacity) : std::malloc(new_capacity);
    if (p == nullptr) throw std::bad_alloc();
    // Before the new part is touched: a large buffer's pages are then faulted in 2 MiB at a time.
    advise_huge_pages(p, new_capacity);
    if (!owned_ && size_ != 0) std::memcpy(p, data_, size_);
    data_ = static_cast<std::byte*>(p);
    capacity_ = new_capacity;
    owned_ = true;
  }

  void release() noexcept {
    if (owned_) std::free(data_);
  }

  static constexpr std::size_t kMinCapacity = 64;

  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
  bool owned_ = true;  // false: data_ is storage given to over()
};

}  // namespace procpool::detail
