// procpool::detail: the pool's driver: the object a Pool holds. It owns the scheduler and the
// local transport, guards both with one mutex, and decides who waits and how.
//
// There is no background thread: whichever caller waits on the pool (map, Future::get, an imap
// iterator, join) drives it, one at a time, with the mutex released while it sleeps. A round
// sends what can be sent, spins briefly on the write counters of workers that owe results soon,
// else sleeps in poll() until a socket, a pidfd, the zygote or another thread has news, then
// hands the news to the scheduler.
#pragma once

#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include "../error.hpp"
#include "batch.hpp"
#include "local_transport.hpp"
#include "scheduler.hpp"
#include "settings.hpp"
#include "spin.hpp"

namespace procpool::detail {

class PoolCore {
 public:
  explicit PoolCore(Settings settings)
      : settings_(std::move(settings)), transport_(settings_), scheduler_(settings_, transport_, clock_),
        owner_pid_(::getpid()) {
    transport_.start(scheduler_);
    // A worker that could not be forked fails the construction. (One whose initializer failed
    // does not: the pool is then constructed broken, and its calls say why.)
    if (!scheduler_.spawn_error().empty() && !scheduler_.lifecycle().broken())
      throw Error(fmt::format("procpool::Pool: cannot start the pool's workers: {}", scheduler_.spawn_error()));
    scheduler_.lifecycle().started();
  }
  PoolCore(const PoolCore&) = delete;
  PoolCore& operator=(const PoolCore&) = delete;
  ~PoolCore() { shutdown(/*graceful=*/false); }

  [[nodiscard]] std::size_t size() const noexcept { return settings_.workers; }
  [[nodiscard]] const Settings& settings() const noexcept { return settings_; }

  /// The process that created this pool: only it can use the pool (workers and other children of
  /// it hold a copy of the object, not the pool).
  [[nodiscard]] pid_t owner_pid() const noexcept { return owner_pid_; }

  /// Throws procpool::Error when called from a progress callback of this pool: the callback runs
  /// with the pool's mutex held, so any call into the pool would deadlock.
  void check_not_in_callback() const {
    if (callback_running_for() == &scheduler_)
      throw Error("procpool::Pool: a progress callback called into the pool that runs it; callbacks must not call "
                  "into their own pool (note what you need, and call the pool after the call returns)");
  }

  /// Registers a callable (the function that rebuilds it in a worker, and its bytes); identical
  /// callables share an id, so a worker is sent a callable only when it switches to it.
  std::uint64_t register_job(std::uintptr_t runner_factory, std::span<const std::byte> callable) {
    check_not_in_callback();
    std::lock_guard lock(mu_);
    return scheduler_.register_job(runner_factory, callable);
  }

  /// Queues a batch of job `job` and starts sending its first chunks.
  void add_batch(const std::shared_ptr<Batch>& batch, std::uint64_t job) {
    check_not_in_callback();
    std::unique_lock lock(mu_);
    scheduler_.lifecycle().throw_if_unusable();
    scheduler_.add(batch, job);
    if (!driving_) {
      scheduler_.dispatch();
      transport_.flush_all();
    } else {
      transport_.wake();
    }
  }

  /// Drives the pool until `done()` holds (checked with the mutex held), or until the deadline if
  /// one is given (then `done` should test the clock too).
  template <class Done>
  void wait_until(Done&& done, std::optional<std::chrono::steady_clock::time_point> deadline = std::nullopt) {
    check_not_in_callback();
    std::unique_lock lock(mu_);
    while (!done()) {
      if (scheduler_.lifecycle().stopped())
        throw Error("procpool::Pool: the pool was shut down while this call waited on it");
      if (driving_) {
        if (deadline)
          cv_.wait_until(lock, *deadline);
        else
          cv_.wait(lock);
        continue;
      }
      drive_round(lock, deadline, /*spin=*/true);
    }
  }

  /// One round of the pool's work that does not block (results read, chunks sent, deaths handled),
  /// unless another thread is driving the pool already: a caller polling Future::ready() sees its
  /// task finish without any other call driving the pool.
  void make_progress() {
    check_not_in_callback();
    std::unique_lock lock(mu_);
    if (driving_ || scheduler_.lifecycle().stopped()) return;
    drive_round(lock, std::chrono::steady_clock::now(), /*spin=*/false);
  }

  /// Forgets a batch whose caller stopped waiting for it (its call returned or failed, or an imap
  /// range was destroyed): the rest of its input is never read, its progress callback never called
  /// again; chunks already out finish and are discarded.
  void forget(Batch& batch) noexcept {
    // From a progress callback of this pool (an ImapResults destroyed there) this thread already
    // holds the mutex.
    std::unique_lock<std::mutex> lock;
    if (callback_running_for() != &scheduler_) lock = std::unique_lock(mu_);
    scheduler_.forget(batch);
  }

  /// Takes ownership of a pool of fresh workers serving a call of this pool (see Pool::place): its
  /// tasks run to completion whoever holds their Future, and this pool's join(), terminate() and
  /// destruction cover them. Fresh pools whose work is done are shut down on the way.
  void adopt(std::shared_ptr<PoolCore> fresh) {
    std::vector<std::shared_ptr<PoolCore>> done;
    {
      std::lock_guard lock(adopted_mu_);
      for (auto it = adopted_.begin(); it != adopted_.end();) {
        (*it)->make_progress();
        if ((*it)->idle()) {
          done.push_back(std::move(*it));
          it = adopted_.erase(it);
        } else {
          ++it;
        }
      }
      adopted_.push_back(std::move(fresh));
    }
    for (auto& core : done) core->shutdown(/*graceful=*/true);  // idle: returns once it is reaped
  }

  /// No new work may be submitted from now on.
  void close() {
    check_not_in_callback();
    std::lock_guard lock(mu_);
    scheduler_.lifecycle().close();
  }

  [[nodiscard]] bool closed() const {
    check_not_in_callback();
    std::lock_guard lock(mu_);
    return scheduler_.lifecycle().closed();
  }

  /// True when nothing is queued or running.
  [[nodiscard]] bool idle() const {
    std::lock_guard lock(mu_);
    return scheduler_.idle();
  }

  /// Waits for all submitted work, then stops the workers and the zygote (graceful), or kills them
  /// at once, failing whatever had not finished (not graceful). Pools of fresh workers this pool
  /// adopted go the same way.
  void shutdown(bool graceful) {
    check_not_in_callback();
    {
      std::lock_guard lock(mu_);
      Lifecycle& life = scheduler_.lifecycle();
      if (life.stopped()) return;
      life.close();
      if (!graceful) life.terminate();
      // A stream dispatches as it is consumed, and nobody may consume it any more: it is cut off
      // where it is, and its iteration ends with an error saying so, never silently short.
      scheduler_.cut_streams("the pool was shut down (close() and join(), terminate(), or the Pool was destroyed)");
    }
    shutdown_adopted(graceful);
    if (graceful) wait_until([&] { return scheduler_.idle(); });
    std::unique_lock lock(mu_);
    if (scheduler_.lifecycle().stopped()) return;  // another thread finished the shutdown meanwhile
    if (!graceful) scheduler_.terminate("the pool was terminated");
    scheduler_.lifecycle().stop();
    // No thread may still be in a round: it uses the descriptors and the shared memory released below.
    transport_.wake();
    cv_.wait(lock, [&] { return !driving_; });
    transport_.close();
    scheduler_.lifecycle().finish();
    cv_.notify_all();
  }

  /// Throws procpool::Error if no work can be submitted (closed, terminated, or broken).
  void ensure_usable() const {
    check_not_in_callback();
    std::lock_guard lock(mu_);
    scheduler_.lifecycle().throw_if_unusable();
  }

  /// Pids of the live workers (for tests and diagnostics).
  [[nodiscard]] std::vector<pid_t> worker_pids() const {
    check_not_in_callback();
    std::lock_guard lock(mu_);
    return transport_.pids();
  }

  /// Protects the typed halves' state that the driver writes (sinks, progress).
  std::mutex& mutex() const {
    check_not_in_callback();
    return mu_;
  }

 private:
  /// One round by this thread, which becomes the driver for it.
  void drive_round(std::unique_lock<std::mutex>& lock, std::optional<std::chrono::steady_clock::time_point> deadline,
                   bool spin) {
    driving_ = true;
    try {
      drive_once(lock, deadline, spin);
    } catch (...) {
      driving_ = false;
      cv_.notify_all();
      throw;
    }
    driving_ = false;
    cv_.notify_all();
  }

  /// Send what can be sent, wait until something happens, hand it to the scheduler.
  void drive_once(std::unique_lock<std::mutex>& lock, std::optional<std::chrono::steady_clock::time_point> deadline,
                  bool spin) {
    scheduler_.dispatch();
    transport_.flush_all();
    WaitSet& ws = wait_set_;
    transport_.prepare_wait(ws, spin);
    const int timeout_ms = poll_timeout_ms(deadline);

    lock.unlock();
    // Spin briefly first, when a worker owes results soon: they are often microseconds away.
    // Only then: on a machine with as many workers as cores, a parent that spins while workers
    // compute for milliseconds only takes their CPU.
    std::vector<std::size_t>& wrote = wrote_;
    wrote.clear();
    int ready = 0;
    if (!ws.counters.empty()) {
      spin_until(
          [&] {
            for (const auto& c : ws.counters)
              if (c.counter->load(std::memory_order_acquire) != c.seen) wrote.push_back(c.worker);
            return !wrote.empty();
          },
          std::chrono::microseconds{50});
      if (wrote.empty()) ready = poll_retry(ws.fds.data(), ws.fds.size(), 0);
    }
    if (wrote.empty() && ready <= 0) ready = poll_retry(ws.fds.data(), ws.fds.size(), timeout_ms);
    lock.lock();

    // Results first: the workers that wrote are read without asking poll.
    for (const std::size_t w : wrote) transport_.read_worker(w);
    if (wrote.empty()) transport_.handle_events(ws);
    scheduler_.tick();
    scheduler_.dispatch();
    transport_.flush_all();
  }

  /// How long poll may sleep: until the scheduler's next timer or the caller's deadline.
  [[nodiscard]] int poll_timeout_ms(std::optional<std::chrono::steady_clock::time_point> deadline) const {
    using std::chrono::milliseconds;
    int timeout_ms = -1;
    if (const auto next = scheduler_.next_timer())
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
      std::lock_guard lock(adopted_mu_);
      cores.swap(adopted_);
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

  const Settings settings_;
  MonotonicClock clock_;
  LocalTransport transport_;
  Scheduler scheduler_;
  const pid_t owner_pid_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool driving_ = false;  // a thread is in a round (the mutex is released while it waits)
  WaitSet wait_set_;      // the driver's scratch, reused across rounds
  std::vector<std::size_t> wrote_;

  // Pools of fresh workers serving calls of this one (see adopt). Its own mutex, never held while
  // calling into them: their progress callbacks may call this pool.
  std::mutex adopted_mu_;
  std::vector<std::shared_ptr<PoolCore>> adopted_;
};

}  // namespace procpool::detail
