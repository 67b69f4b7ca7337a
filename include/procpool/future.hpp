// procpool::Future: the result of Pool::submit.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <utility>

#include "detail/batch.hpp"
#include "detail/pool_core.hpp"
#include "error.hpp"
#include "outcome.hpp"

namespace procpool {

class Pool;

/// The result of Pool::submit: get() waits for the task (driving the pool meanwhile) and returns
/// its value or rethrows its failure. Movable; its type depends only on the result type.
template <class R>
class Future {
 public:
  Future() = default;
  Future(Future&&) noexcept = default;
  Future& operator=(Future&&) noexcept = default;
  /// Move-only, like std::future: the result is taken once.
  Future(const Future&) = delete;
  Future& operator=(const Future&) = delete;

  /// True if this Future refers to a task whose result has not been taken yet.
  [[nodiscard]] bool valid() const noexcept { return task_ != nullptr; }

  /// True once the task has an outcome. Does not wait, but does the pool's pending work that
  /// takes no waiting (reads results that arrived), so polling sees the task finish.
  [[nodiscard]] bool ready() const {
    check_valid();
    core_->make_progress();
    std::lock_guard lock(core_->mutex());
    return task_->settled();
  }

  /// Waits for the outcome.
  void wait() const {
    check_valid();
    core_->wait_until([&] { return task_->settled(); });
  }

  /// Waits at most `timeout` (zero: only polls, like ready()); true if the outcome is there.
  template <class Rep, class Period>
  [[nodiscard]] bool wait_for(std::chrono::duration<Rep, Period> timeout) const {
    check_valid();
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    core_->make_progress();
    core_->wait_until([&] { return task_->settled() || std::chrono::steady_clock::now() >= deadline; }, deadline);
    std::lock_guard lock(core_->mutex());
    return task_->settled();
  }

  /// Waits, then returns the task's value or throws its failure (RemoteError, ProcessError,
  /// TimeoutError). The result is taken: afterwards valid() is false.
  R get() {
    wait();
    auto task = std::move(task_);
    auto core = std::move(core_);
    std::unique_lock lock(core->mutex());
    return task->take();
  }

 private:
  friend class Pool;

  // Future and ImapResults hold their call the same way: the pool's core, and the call's batch
  // through the abstract batch type of its result.
  Future(std::shared_ptr<detail::PoolCore> core, std::shared_ptr<detail::TaskBatch<R>> task)
      : core_(std::move(core)), task_(std::move(task)) {}

  void check_valid() const {
    if (!task_) throw Error("procpool::Future: no task (default-constructed, moved from, or get() already called)");
  }

  std::shared_ptr<detail::PoolCore> core_;
  std::shared_ptr<detail::TaskBatch<R>> task_;
};

}  // namespace procpool
