// procpool::detail: done callbacks and the progress thread, for any driver (the local pool's
// PoolCore, rank 0's MpiDriver).
//
// A driver holds one CallbackRunner. Its mutex is the driver's mutex and its condition variable
// the driver's: both live in a block shared with the progress thread, because a done callback run
// by that thread may destroy the last handle on its pool. The driver is then destroyed on the
// progress thread, in the middle of the callback; when the callback returns, the thread still
// relocks the mutex, notifies and looks at its stop flag. Those live in the shared block, and
// nothing of the driver is touched once the driver asked the runner to stop.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "batch.hpp"

namespace procpool::detail {

/// Runs the done callbacks of watched calls once they settle, and owns the progress thread that
/// drives the pool for them while no caller does (see the file comment).
class CallbackRunner {
 public:
  /// What the runner needs of its driver. Every hook is called with the mutex held, and never after
  /// the driver called stop().
  struct Hooks {
    /// Whether the progress thread may drive a round now (no other thread drives, the pool runs).
    std::function<bool()> may_drive;
    /// One round of the driver; it may release the mutex while it waits, and may throw.
    std::function<void(std::unique_lock<std::mutex>&)> round;
    /// After callbacks ran, e.g. to wake a thread asleep in poll for one of their calls; may be empty.
    std::function<void()> after_callbacks;
    /// How long the progress thread sleeps, when it may not drive, before it looks again; none: until
    /// notified (a driver whose state changes always notify says so).
    std::optional<std::chrono::nanoseconds> recheck;
  };

  explicit CallbackRunner(Hooks hooks) : shared_(std::make_shared<Shared>(std::move(hooks))) {}
  CallbackRunner(const CallbackRunner&) = delete;
  CallbackRunner& operator=(const CallbackRunner&) = delete;
  /// Stops the progress thread if the driver did not (it must have, if the thread may be in a round:
  /// the round uses the driver's state, destroyed before this).
  ~CallbackRunner() {
    std::unique_lock lock(shared_->mu);
    stop(lock);
  }

  /// The driver's mutex.
  [[nodiscard]] std::mutex& mutex() const noexcept { return shared_->mu; }
  /// The driver's condition variable, notified whenever a round ends or callbacks ran.
  [[nodiscard]] std::condition_variable& cv() const noexcept { return shared_->cv; }

  /// Runs `batch`'s done callbacks once it settles. With the mutex held. Once the pool stopped (no
  /// round will come), those of settled calls run now, on this thread; else the progress thread
  /// starts, unless it runs already or the runner was stopped.
  void watch(std::shared_ptr<Batch> batch, std::unique_lock<std::mutex>& lock, bool pool_stopped) {
    Shared& s = *shared_;
    if (std::find(s.watched.begin(), s.watched.end(), batch) == s.watched.end()) s.watched.push_back(std::move(batch));
    if (pool_stopped) {
      run_settled_callbacks(lock);
      return;
    }
    if (!s.thread.joinable() && !s.stop) s.thread = std::thread([shared = shared_] { progress_loop(*shared); });
    s.cv.notify_all();
  }

  /// Runs the done callbacks of watched calls that settled, with the mutex released while each runs;
  /// then whoever waits for them (a Future's get()) looks again.
  void run_settled_callbacks(std::unique_lock<std::mutex>& lock) { run_settled(*shared_, lock); }

  /// Stops the progress thread, if there is one (with the mutex held; released while joining). When
  /// the progress thread itself stops it (a done callback destroyed the pool), it is detached: it
  /// ends when the callback returns, holding the shared block to the end.
  void stop(std::unique_lock<std::mutex>& lock) {
    Shared& s = *shared_;
    s.stop = true;
    s.cv.notify_all();
    if (!s.thread.joinable()) return;
    if (s.thread.get_id() == std::this_thread::get_id()) {
      s.thread.detach();
      return;
    }
    std::thread thread = std::move(s.thread);
    lock.unlock();
    thread.join();
    lock.lock();
  }

 private:
  struct Shared {
    explicit Shared(Hooks h) : hooks(std::move(h)) {}
    Hooks hooks;
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::shared_ptr<Batch>> watched;  // calls whose done callbacks wait to run
    std::thread thread;
    bool stop = false;
  };

  static void run_settled(Shared& s, std::unique_lock<std::mutex>& lock) {
    if (s.watched.empty()) return;
    std::vector<std::shared_ptr<Batch>> settled;
    std::erase_if(s.watched, [&](const std::shared_ptr<Batch>& b) {
      if (!b->settled()) return false;
      settled.push_back(b);
      return true;
    });
    if (settled.empty()) return;
    for (const auto& b : settled) b->run_done_callbacks(lock);
    s.cv.notify_all();
    // A callback may have destroyed the driver: then it asked us to stop, and its hooks are gone.
    if (!s.stop && s.hooks.after_callbacks) s.hooks.after_callbacks();
  }

  /// The progress thread: drives the pool while a watched call has not settled and no caller drives
  /// it, so that callbacks run even if the caller's threads never call the pool again.
  static void progress_loop(Shared& s) {
    std::unique_lock lock(s.mu);
    for (;;) {
      run_settled(s, lock);
      if (s.stop) return;
      if (s.watched.empty() || !s.hooks.may_drive()) {
        if (s.hooks.recheck)
          s.cv.wait_for(lock, *s.hooks.recheck);
        else
          s.cv.wait(lock);
        continue;
      }
      try {
        s.hooks.round(lock);
      } catch (...) {
        // A round failed (a system call or MPI): callers see the same when they drive. Try again a
        // little later rather than spin on the failure.
        if (!lock.owns_lock()) lock.lock();
        s.cv.wait_for(lock, std::chrono::milliseconds{10});
      }
    }
  }

  std::shared_ptr<Shared> shared_;
};

}  // namespace procpool::detail
