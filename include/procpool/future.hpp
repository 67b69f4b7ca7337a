// procpool::Future: the result of Pool::submit.
#pragma once

#include <chrono>
#include <concepts>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include <fmt/core.h>

#include "detail/batch.hpp"
#include "detail/driver.hpp"
#include "error.hpp"
#include "outcome.hpp"

namespace procpool {

class Pool;
namespace mpi {
class Pool;
}  // namespace mpi

/// The result of Pool::submit: get() waits for the task (driving the pool meanwhile) and returns
/// its value or rethrows its failure. Movable; its type depends only on the result type.
template <class R>
class Future {
 public:
  /// A Future with no task (valid() is false).
  Future() = default;
  /// Takes over the task; the moved-from Future has none.
  Future(Future&&) noexcept = default;
  /// Takes over the task; the task this Future held runs on, unobserved, as if dropped.
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
  /// TimeoutError, CancelledError). The result is taken: afterwards valid() is false. Waits for the
  /// task's done callbacks too; if one threw, throws procpool::Error saying so, with the callback's
  /// exception nested (std::rethrow_if_nested).
  R get() {
    check_valid();
    core_->wait_until([&] { return task_->settled() && task_->callbacks_idle(); });
    auto task = std::move(task_);
    auto core = std::move(core_);
    std::unique_lock lock(core->mutex());
    if (const std::exception_ptr thrown = task->take_callback_error()) {
      lock.unlock();
      try {
        std::rethrow_exception(thrown);
      } catch (const std::exception& e) {
        std::throw_with_nested(
            Error(fmt::format("procpool::Future: a done callback of this task threw: {}", e.what())));
      } catch (...) {
        std::throw_with_nested(Error("procpool::Future: a done callback of this task threw a non-standard exception"));
      }
    }
    return task->take();
  }

  /// Stops the task. One that has not started never runs; one that is running is stopped (its
  /// worker is killed and replaced, and other work queued on that worker runs elsewhere). Either
  /// way returns true, and get() throws CancelledError. Returns false, and changes nothing, if the
  /// task has finished (whatever its outcome).
  bool cancel() {
    check_valid();
    return core_->cancel(*task_);
  }

  /// Calls `f(const procpool::Outcome<R>&)` exactly once when the task ends (value, failure or
  /// cancellation), or at once, on this thread, if it has ended. get() still works afterwards.
  /// It runs on the thread that drives the pool when the task ends: a thread waiting on the pool
  /// (in map, get, an imap loop...), or the pool's progress thread, which drives the pool while
  /// callbacks wait and no caller does, so callbacks run even if the caller only sleeps. The pool's
  /// mutex is not held: a callback may call into the pool (submit more work, say), but it delays
  /// the thread it runs on, so keep it short. An exception from it is reported by get(), or on
  /// stderr if the Future is dropped without get().
  template <class F>
    requires std::invocable < F&, const Outcome<R>
  & > void add_done_callback(F f) {
    check_valid();
    typename detail::TaskBatch<R>::Callback callback(std::move(f));
    std::unique_lock lock(core_->mutex());
    if (task_->queue_callback(callback)) {
      lock.unlock();
      core_->watch(task_);
      return;
    }
    const Outcome<R>& outcome = task_->outcome();
    lock.unlock();
    callback(outcome);
  }

 private:
  friend class Pool;
  friend class mpi::Pool;  // procpool::mpi::Pool (mpi.hpp) returns them too
  template <class T>
  friend class AsCompleted;

  // Future and ImapResults hold their call the same way: the pool's driver, and the call's batch
  // through the abstract batch type of its result.
  Future(std::shared_ptr<detail::Driver> core, std::shared_ptr<detail::TaskBatch<R>> task)
      : core_(std::move(core)), task_(std::move(task)) {}

  void check_valid() const {
    if (!task_) throw Error("procpool::Future: no task (default-constructed, moved from, or get() already called)");
  }

  std::shared_ptr<detail::Driver> core_;
  std::shared_ptr<detail::TaskBatch<R>> task_;
};

}  // namespace procpool
