// procpool::detail: the definitions of PoolCore (pool_core.hpp), the pool's driver.
#pragma once

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <string>
#include <utility>

#include <fmt/core.h>

#include "../error.hpp"
#include "batch.hpp"
#include "callback_runner.hpp"
#include "local_transport.hpp"
#include "pool_core.hpp"
#include "scheduler.hpp"
#include "spin.hpp"

namespace procpool::detail {

struct PoolCore::State {
  explicit State(Settings s)
      : settings(std::move(s)),
        transport(settings),
        scheduler(settings, transport, clock),
        callbacks(CallbackRunner::Hooks{
            .may_drive = [this] { return !driving && !scheduler.lifecycle().stopped(); },
            .round = [this](std::unique_lock<std::mutex>& lock) { drive_round(lock, std::nullopt, /*spin=*/true); },
            // A thread asleep in poll for a call whose callbacks ran wakes up to see it done.
            .after_callbacks =
                [this] {
                  if (!scheduler.lifecycle().stopped()) transport.wake();
                },
            // Every change that lets the thread drive (a round ends, a call is watched) notifies.
            .recheck = std::nullopt,
        }),
        mu(callbacks.mutex()),
        cv(callbacks.cv()) {}
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  /// One round by this thread, which becomes the driver for it.
  void drive_round(std::unique_lock<std::mutex>& lock, std::optional<TimePoint> deadline, bool spin) {
    driving = true;
    try {
      drive_once(lock, deadline, spin);
    } catch (...) {
      driving = false;
      cv.notify_all();
      throw;
    }
    driving = false;
    cv.notify_all();
  }

  /// Send what can be sent, wait until something happens, hand it to the scheduler.
  void drive_once(std::unique_lock<std::mutex>& lock, std::optional<TimePoint> deadline, bool spin) {
    scheduler.dispatch();
    transport.flush_all();
    transport.prepare_wait(wait_set, spin);
    const int timeout_ms = poll_timeout_ms(deadline);

    lock.unlock();
    // Spin briefly first, when a worker owes results soon: they are often microseconds away.
    // Only then: on a machine with as many workers as cores, a parent that spins while workers
    // compute for milliseconds only takes their CPU.
    wrote.clear();
    int ready = 0;
    if (!wait_set.counters.empty()) {
      spin_until(
          [&] {
            for (const auto& c : wait_set.counters)
              if (c.counter->load(std::memory_order_acquire) != c.seen) wrote.push_back(c.worker);
            return !wrote.empty();
          },
          std::chrono::microseconds{50});
      if (wrote.empty()) ready = poll_retry(wait_set.fds.data(), wait_set.fds.size(), 0);
    }
    if (wrote.empty() && ready <= 0) ready = poll_retry(wait_set.fds.data(), wait_set.fds.size(), timeout_ms);
    lock.lock();

    // Workers whose counter moved are read without asking poll.
    for (const std::size_t w : wrote) transport.read_worker(w);
    if (wrote.empty()) transport.handle_events(wait_set);
    scheduler.tick();
    scheduler.dispatch();
    transport.flush_all();
  }

  /// How long poll may sleep: until the scheduler's next timer or the caller's deadline.
  [[nodiscard]] int poll_timeout_ms(std::optional<TimePoint> deadline) const {
    using std::chrono::milliseconds;
    int timeout_ms = -1;
    if (const auto next = scheduler.next_timer())
      timeout_ms = static_cast<int>(std::chrono::ceil<milliseconds>(*next).count());
    if (deadline) {
      const auto left = std::chrono::ceil<milliseconds>(*deadline - std::chrono::steady_clock::now());
      const int left_ms = static_cast<int>(std::max<std::int64_t>(0, left.count()));
      timeout_ms = timeout_ms < 0 ? left_ms : std::min(timeout_ms, left_ms);
    }
    return timeout_ms;
  }

  /// Shuts the adopted pools of fresh workers down like this one (see adopt).
  void shutdown_adopted(bool graceful) noexcept {
    std::vector<std::shared_ptr<PoolCore>> cores;
    {
      std::lock_guard guard(adopted_mu);
      cores.swap(adopted);
    }
    for (auto& core : cores) {
      try {
        core->shutdown(graceful);
      } catch (...) {
        try {
          core->shutdown(/*graceful=*/false);
        } catch (...) {
          // Its destructor kills what is left.
        }
      }
    }
  }

  const Settings settings;
  MonotonicClock clock;
  LocalTransport transport;
  Scheduler scheduler;
  const pid_t owner_pid = ::getpid();

  // Done callbacks and the progress thread; it owns the mutex and the condition variable, which
  // the progress thread may need after a done callback destroyed this state (see callback_runner.hpp).
  CallbackRunner callbacks;
  std::mutex& mu;
  std::condition_variable& cv;
  bool driving = false;  // a thread is in a round (the mutex is released while it waits)
  WaitSet wait_set;      // the driver's scratch, reused across rounds
  std::vector<std::size_t> wrote;

  // Pools of fresh workers serving calls of this one (see adopt). Its own mutex, never held while
  // calling into them: their progress callbacks may call this pool.
  std::mutex adopted_mu;
  std::vector<std::shared_ptr<PoolCore>> adopted;
};

PROCPOOL_DECL PoolCore::PoolCore(Settings settings) : s_(std::make_unique<State>(std::move(settings))) {
  s_->transport.start(s_->scheduler);
  // A worker that could not be forked fails the construction. (One whose initializer failed does
  // not: the pool is then constructed broken, and its calls say why.)
  if (!s_->scheduler.spawn_error().empty() && !s_->scheduler.lifecycle().broken())
    throw Error(fmt::format("procpool::Pool: cannot start the pool's workers: {}", s_->scheduler.spawn_error()));
  s_->scheduler.lifecycle().started();
}

PROCPOOL_DECL PoolCore::~PoolCore() {
  try {
    shutdown(/*graceful=*/false);
  } catch (...) {
    // The state's destructors release what is left.
  }
  // Normally stopped by shutdown(); not if it threw before it got there.
  std::unique_lock lock(s_->mu);
  s_->callbacks.stop(lock);
}

PROCPOOL_DECL std::size_t PoolCore::size() const noexcept { return s_->settings.workers; }
PROCPOOL_DECL const Settings& PoolCore::settings() const noexcept { return s_->settings; }
PROCPOOL_DECL pid_t PoolCore::owner_pid() const noexcept { return s_->owner_pid; }

PROCPOOL_DECL void PoolCore::check_not_in_callback() const {
  if (callback_running_for() == &s_->scheduler)
    throw Error("procpool::Pool: a progress callback called into the pool that runs it; callbacks must not call "
                "into their own pool (note what you need, and call the pool after the call returns)");
}

PROCPOOL_DECL std::uint64_t PoolCore::register_job(std::uintptr_t runner_factory, std::span<const std::byte> callable) {
  check_not_in_callback();
  std::lock_guard lock(s_->mu);
  return s_->scheduler.register_job(runner_factory, callable);
}

PROCPOOL_DECL void PoolCore::add_batch(const std::shared_ptr<Batch>& batch, std::uint64_t job) {
  check_not_in_callback();
  std::unique_lock lock(s_->mu);
  s_->scheduler.lifecycle().throw_if_unusable();
  s_->scheduler.add(batch, job);
  if (!s_->driving) {
    s_->scheduler.dispatch();
    s_->transport.flush_all();
  } else {
    s_->transport.wake();
  }
}

PROCPOOL_DECL void PoolCore::wait(FunctionRef<bool()> done, std::optional<TimePoint> deadline) {
  check_not_in_callback();
  std::unique_lock lock(s_->mu);
  while (!done()) {
    if (s_->scheduler.lifecycle().stopped())
      throw Error("procpool::Pool: the pool was shut down while this call waited on it");
    if (s_->driving) {
      if (deadline)
        s_->cv.wait_until(lock, *deadline);
      else
        s_->cv.wait(lock);
      continue;
    }
    s_->drive_round(lock, deadline, /*spin=*/true);
    s_->callbacks.run_settled_callbacks(lock);
  }
}

PROCPOOL_DECL void PoolCore::make_progress() {
  check_not_in_callback();
  std::unique_lock lock(s_->mu);
  if (s_->driving || s_->scheduler.lifecycle().stopped()) return;
  s_->drive_round(lock, std::chrono::steady_clock::now(), /*spin=*/false);
  s_->callbacks.run_settled_callbacks(lock);
}

PROCPOOL_DECL bool PoolCore::cancel(Batch& batch) {
  check_not_in_callback();
  std::unique_lock lock(s_->mu);
  const bool stopped = s_->scheduler.abort(batch, Abort::cancelled);
  if (stopped) {
    // Chunks it shared with other calls may be back in the queue for another worker.
    if (!s_->driving) {
      s_->scheduler.dispatch();
      s_->transport.flush_all();
    } else {
      s_->transport.wake();
    }
  }
  s_->cv.notify_all();
  s_->callbacks.run_settled_callbacks(lock);
  return stopped;
}

PROCPOOL_DECL void PoolCore::watch(std::shared_ptr<Batch> batch) {
  std::unique_lock lock(s_->mu);
  s_->callbacks.watch(std::move(batch), lock, s_->scheduler.lifecycle().stopped());
}

PROCPOOL_DECL void PoolCore::forget(Batch& batch) noexcept {
  // From a progress callback of this pool (an ImapResults destroyed there) this thread already
  // holds the mutex.
  std::unique_lock<std::mutex> lock;
  if (callback_running_for() != &s_->scheduler) lock = std::unique_lock(s_->mu);
  s_->scheduler.forget(batch);
}

PROCPOOL_DECL void PoolCore::adopt(std::shared_ptr<PoolCore> fresh) {
  std::vector<std::shared_ptr<PoolCore>> done;
  {
    std::lock_guard lock(s_->adopted_mu);
    auto& adopted = s_->adopted;
    for (auto it = adopted.begin(); it != adopted.end();) {
      (*it)->make_progress();
      if ((*it)->idle()) {
        done.push_back(std::move(*it));
        it = adopted.erase(it);
      } else {
        ++it;
      }
    }
    adopted.push_back(std::move(fresh));
  }
  for (auto& core : done) core->shutdown(/*graceful=*/true);  // idle: returns once it is reaped
}

PROCPOOL_DECL void PoolCore::close() {
  check_not_in_callback();
  std::lock_guard lock(s_->mu);
  s_->scheduler.lifecycle().close();
}

PROCPOOL_DECL bool PoolCore::closed() const {
  check_not_in_callback();
  std::lock_guard lock(s_->mu);
  return s_->scheduler.lifecycle().closed();
}

PROCPOOL_DECL bool PoolCore::idle() const {
  std::lock_guard lock(s_->mu);
  return s_->scheduler.idle();
}

PROCPOOL_DECL void PoolCore::shutdown(bool graceful) {
  check_not_in_callback();
  State& s = *s_;
  {
    std::lock_guard lock(s.mu);
    Lifecycle& life = s.scheduler.lifecycle();
    if (life.stopped()) return;
    life.close();
    if (!graceful) life.terminate();
    // A stream dispatches as it is consumed, and nobody may consume it any more: it is cut off
    // where it is, and its iteration ends with an error saying so, never silently short.
    s.scheduler.cut_streams("the pool was shut down (close() and join(), terminate(), or the Pool was destroyed)");
  }
  s.shutdown_adopted(graceful);
  if (graceful) wait_until([&] { return s.scheduler.idle(); });
  std::unique_lock lock(s.mu);
  if (s.scheduler.lifecycle().stopped()) return;  // another thread finished the shutdown meanwhile
  if (!graceful) s.scheduler.terminate("the pool was terminated");
  s.scheduler.lifecycle().stop();
  // No thread may still be in a round: it uses the descriptors and the shared memory released below.
  s.transport.wake();
  s.cv.wait(lock, [&] { return !s.driving; });
  s.transport.close();
  s.scheduler.lifecycle().finish();
  s.cv.notify_all();
  // terminate() failed what had not finished: their callbacks run now.
  s.callbacks.run_settled_callbacks(lock);
  s.callbacks.stop(lock);
}

PROCPOOL_DECL void PoolCore::ensure_usable() const {
  check_not_in_callback();
  std::lock_guard lock(s_->mu);
  s_->scheduler.lifecycle().throw_if_unusable();
}

PROCPOOL_DECL std::vector<pid_t> PoolCore::worker_pids() const {
  check_not_in_callback();
  std::lock_guard lock(s_->mu);
  return s_->transport.pids();
}

PROCPOOL_DECL double PoolCore::job_ns_per_item(std::uint64_t job) const {
  std::lock_guard lock(s_->mu);
  const Job* found = s_->scheduler.jobs().find(job);
  return found != nullptr ? found->ns_per_item : 0;
}

PROCPOOL_DECL std::mutex& PoolCore::mutex() const {
  check_not_in_callback();
  return s_->mu;
}

}  // namespace procpool::detail
