// procpool: a growable byte buffer for hot paths (encoding, pipe I/O).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <span>
#include <utility>

namespace procpool::detail {

/// A contiguous, growable byte buffer. Unlike std::vector<std::byte>, growing never zero-fills:
/// grow(n) and resize(n) hand out uninitialised bytes the caller is expected to overwrite.
/// Growth is amortised (capacity doubles). Movable, not copyable. Allocation failure throws std::bad_alloc.
class Buffer {
 public:
  Buffer() noexcept = default;
  explicit Buffer(std::size_t initial_capacity) { reserve(initial_capacity); }
  ~Buffer() { std::free(data_); }

  Buffer(Buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        capacity_(std::exchange(other.capacity_, 0)) {}

  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      std::free(data_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      capacity_ = std::exchange(other.capacity_, 0);
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
    void* p = std::realloc(data_, new_capacity);
    if (p == nullptr) throw std::bad_alloc();
    data_ = static_cast<std::byte*>(p);
    capacity_ = new_capacity;
  }

  static constexpr std::size_t kMinCapacity = 64;

  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

}  // namespace procpool::detail
