// procpool::detail: lanes of shared memory that carry a chunk's large items to a worker and its
// large results back, instead of the worker's socket.
//
// Through a socket every byte is copied twice, into the kernel and out of it, and the parent, which
// feeds every worker alone, is what limits a map over large items. Through a lane the sender writes
// the bytes where the receiver decodes them from: one copy on each side.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

namespace procpool::detail {

/// The lane a chunk holds is named in its header; this value names none.
inline constexpr std::uint32_t kNoLane = 0xFFFFFFFFU;

/// Payloads from this size travel through a lane. Smaller ones go with their frame: a lane saves
/// nothing on them, and a small frame may still go through the worker's mailbox without a system call.
inline constexpr std::size_t kLaneThresholdBytes = std::size_t{64} << 10;

/// For each worker, kLanesPerWorker pairs of lanes: an items lane (the parent writes, the worker
/// reads) and a results lane (the worker writes, the parent reads). A chunk in flight holds one pair
/// from the moment it is sent until its results are decoded, and a worker has at most two chunks in
/// flight, so neither side ever writes where the other is still reading.
///
/// The mapping is shared and made before the zygote is forked, so every worker, replacements
/// included, inherits it at the same address. Pages are allocated when first written and stay
/// until the pool is destroyed: a worker's lanes hold at most four times the largest chunk it was
/// given through them.
class LaneArea {
 public:
  static constexpr std::size_t kLanesPerWorker = 2;
  static constexpr std::size_t kLaneBytes = std::size_t{16} << 20;

  LaneArea() noexcept = default;

  /// Maps the lanes of `workers` workers. Address space only: nothing is allocated until written.
  /// Where the mapping is refused (a low RLIMIT_AS, strict overcommit), the area stays empty and
  /// every payload travels through the sockets, as it would without lanes.
  explicit LaneArea(std::size_t workers) noexcept {
    const std::size_t bytes = workers * kBytesPerWorker;
    if (workers == 0 || bytes / kBytesPerWorker != workers) return;
    void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) return;
    base_ = static_cast<std::byte*>(mem);
    bytes_ = bytes;
  }

  LaneArea(LaneArea&& other) noexcept
      : base_(std::exchange(other.base_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  LaneArea& operator=(LaneArea&& other) noexcept {
    if (this != &other) {
      unmap();
      base_ = std::exchange(other.base_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  LaneArea(const LaneArea&) = delete;
  LaneArea& operator=(const LaneArea&) = delete;
  ~LaneArea() { unmap(); }

  /// Keeps processes forked from now on from inheriting the lanes: called once the zygote, which
  /// hands them to the workers, has been forked. (Nothing else the caller forks needs them.)
  void keep_from_later_forks() const noexcept {
    if (base_ != nullptr) (void)::madvise(base_, bytes_, MADV_DONTFORK);
  }

  /// False when the mapping was refused.
  [[nodiscard]] bool available() const noexcept { return base_ != nullptr; }

  /// Worker `worker`'s items lane number `lane` (< kLanesPerWorker).
  [[nodiscard]] std::span<std::byte> items(std::size_t worker, std::uint32_t lane) const noexcept {
    return {base_ + worker * kBytesPerWorker + (2 * std::size_t{lane}) * kLaneBytes, kLaneBytes};
  }

  /// Worker `worker`'s results lane number `lane` (< kLanesPerWorker).
  [[nodiscard]] std::span<std::byte> results(std::size_t worker, std::uint32_t lane) const noexcept {
    return {base_ + worker * kBytesPerWorker + (2 * std::size_t{lane} + 1) * kLaneBytes, kLaneBytes};
  }

 private:
  static constexpr std::size_t kBytesPerWorker = 2 * kLanesPerWorker * kLaneBytes;

  void unmap() noexcept {
    if (base_ != nullptr) ::munmap(base_, bytes_);
    base_ = nullptr;
    bytes_ = 0;
  }

  std::byte* base_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace procpool::detail
