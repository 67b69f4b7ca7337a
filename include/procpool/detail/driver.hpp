// procpool::detail: what a Future or an ImapResults needs of the pool its call runs on. The local
// pool's driver (pool_core.hpp) is one; a pool whose workers are elsewhere (MPI ranks) is another.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>

#include "function_ref.hpp"

namespace procpool::detail {

class Batch;

class Driver {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;

  Driver() = default;
  Driver(const Driver&) = delete;
  Driver& operator=(const Driver&) = delete;
  virtual ~Driver() = default;

  /// Drives the pool until `done()` holds (checked with the mutex held), or until the deadline if
  /// one is given (then `done` should test the clock too).
  virtual void wait(FunctionRef<bool()> done, std::optional<TimePoint> deadline) = 0;
  template <class Done>
  void wait_until(Done&& done, std::optional<TimePoint> deadline = std::nullopt) {
    wait(FunctionRef<bool()>(done), deadline);
  }

  /// One round of the pool's work that does not block, unless another thread is driving the pool
  /// already: a caller polling Future::ready() sees its task finish with no other call driving.
  virtual void make_progress() = 0;

  /// Forgets a batch whose caller stopped waiting for it: the rest of its input is never read, its
  /// progress callback never called again; chunks already out finish and are discarded.
  virtual void forget(Batch& batch) noexcept = 0;

  /// Stops a call: what has not started never runs, what runs is killed, and every item without an
  /// outcome fails with CancelledError. False if the call had already settled.
  virtual bool cancel(Batch& batch) = 0;

  /// The batch has done callbacks: they run once it settles, even if no caller thread drives the
  /// pool until then (the driver then makes progress on its own).
  virtual void watch(std::shared_ptr<Batch> batch) = 0;

  /// Protects the typed halves' state that the driver writes (sinks, progress).
  [[nodiscard]] virtual std::mutex& mutex() const = 0;
};

}  // namespace procpool::detail
