// procpool::detail: the pool's lifecycle, one explicit state and its transitions.
//
//   starting --started()--> open --close()--> closed --stop()--> stopping --finish()--> stopped
//       |                    |                  |                    ^
//       +--- break_with() ---+------------------+--> broken --stop()-+
//       |                    |                  |       |            |
//       +--- terminate() ----+------------------+-------+--> terminating --stop()--+
//
// open: calls are accepted, chunks go out, dead workers are replaced.
// closed: no new calls; the work already submitted runs to its end (workers still replaced).
// broken: the workers cannot run tasks (an initializer failed, the zygote died); calls fail with
//   the reason, and nothing is dispatched or replaced.
// terminating: terminate() killed the workers; their deaths are not failures of the pool.
// stopping: the workers and the zygote are being told to exit and reaped; stopped: all released.
#pragma once

#include <optional>
#include <string>
#include <utility>

#include <fmt/core.h>

#include "../error.hpp"

namespace procpool::detail {

enum class Phase { starting, open, closed, broken, terminating, stopping, stopped };

class Lifecycle {
 public:
  [[nodiscard]] Phase phase() const noexcept { return phase_; }

  /// New chunks may be sent to workers.
  [[nodiscard]] bool dispatches() const noexcept {
    return phase_ == Phase::starting || phase_ == Phase::open || phase_ == Phase::closed;
  }
  /// Dead workers are replaced, and deaths before an initializer finished count against it.
  [[nodiscard]] bool replaces_workers() const noexcept { return dispatches(); }
  /// close(), join(), terminate() or a failure ended the acceptance of new calls.
  [[nodiscard]] bool closed() const noexcept { return phase_ != Phase::starting && phase_ != Phase::open; }
  /// The workers are being stopped, or are gone.
  [[nodiscard]] bool stopping() const noexcept { return phase_ == Phase::stopping || phase_ == Phase::stopped; }
  [[nodiscard]] bool stopped() const noexcept { return phase_ == Phase::stopped; }
  [[nodiscard]] bool broken() const noexcept { return broken_reason_.has_value(); }
  [[nodiscard]] const std::optional<std::string>& broken_reason() const noexcept { return broken_reason_; }

  /// Throws procpool::Error saying why no new call can be accepted, if none can.
  void throw_if_unusable() const {
    if (broken_reason_) throw Error(*broken_reason_);
    if (closed())
      throw Error("procpool::Pool: the pool is closed (close(), join() or terminate() was called); "
                  "no new work can be submitted");
  }

  void started() noexcept { move(Phase::starting, Phase::open); }
  void close() noexcept { move(Phase::open, Phase::closed); }
  /// The workers cannot run tasks any more; the first reason is kept.
  void break_with(std::string reason) {
    if (!replaces_workers()) return;
    broken_reason_ = std::move(reason);
    phase_ = Phase::broken;
  }
  void terminate() noexcept {
    if (phase_ != Phase::stopping && phase_ != Phase::stopped) phase_ = Phase::terminating;
  }
  void stop() noexcept {
    if (phase_ != Phase::stopped) phase_ = Phase::stopping;
  }
  void finish() noexcept { phase_ = Phase::stopped; }

 private:
  void move(Phase from, Phase to) noexcept {
    if (phase_ == from) phase_ = to;
  }

  Phase phase_ = Phase::starting;
  std::optional<std::string> broken_reason_;
};

}  // namespace procpool::detail
