// procpool::detail: the one spin-wait of the pool, shared by the parent (waiting for results) and
// the workers (waiting for chunks).
//
// A cross-core wake-up from a blocking call costs tens of microseconds; a peer that was just busy
// usually answers within that time, and watching a counter in shared memory costs no system call.
// So each side spins a short while on what it waits for, and only then blocks.
#pragma once

#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdint>

namespace procpool::detail {

/// Tells the CPU this thread is spinning (x86 pause: spares the sibling hyper-thread and the
/// memory-order pipeline flush on exit); nothing elsewhere.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/// Calls `ready()` until it returns true or `budget` passes; true unless the budget ran out.
/// `ready` is called at least once, before the clock is first read. Between calls: a pause
/// instruction; every 64 turns the clock is checked, and every 1024 turns the CPU is yielded,
/// in case the peer being waited for shares this CPU.
template <class Ready>
bool spin_until(Ready&& ready, std::chrono::nanoseconds budget) noexcept(noexcept(static_cast<bool>(ready()))) {
  const auto until = std::chrono::steady_clock::now() + budget;
  for (unsigned k = 1;; ++k) {
    if (ready()) return true;
    cpu_relax();
    if (k % 64 == 0) {
      if (std::chrono::steady_clock::now() >= until) return false;
      if (k % 1024 == 0) ::sched_yield();
    }
  }
}

/// Spins until `counter` moves away from `seen`, or `or_set` (if given) becomes non-zero, or
/// `budget` passes; true unless the budget ran out.
inline bool spin_until_changed(const std::atomic<std::uint64_t>& counter, std::uint64_t seen,
                               std::chrono::nanoseconds budget,
                               const std::atomic<std::uint32_t>* or_set = nullptr) noexcept {
  return spin_until(
      [&]() noexcept {
        return counter.load(std::memory_order_acquire) != seen ||
               (or_set != nullptr && or_set->load(std::memory_order_acquire) != 0);
      },
      budget);
}

}  // namespace procpool::detail
