// procpool::detail: the pool's driver, the object a Pool holds. It owns the scheduler and the local
// transport (pool_core_impl.hpp), guards both with one mutex, and decides who waits and how.
//
// There is no background thread: whichever caller waits on the pool (map, Future::get, an imap
// iterator, join) drives it, one at a time, with the mutex released while it sleeps. A round
// sends what can be sent, spins briefly on the write counters of workers that owe results soon,
// else sleeps in poll() until a socket, a pidfd, the zygote or another thread has news, then
// hands the news to the scheduler.
//
// Its state lives behind a pointer, so that a program compiled with PROCPOOL_SEPARATE_COMPILATION
// sees only this declaration, not the scheduler, the transport or the zygote.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "config.hpp"
#include "driver.hpp"
#include "function_ref.hpp"
#include "settings.hpp"

namespace procpool::detail {

class Batch;

class PoolCore final : public Driver {
 public:
  /// Starts the zygote and the workers; throws procpool::Error if they cannot start.
  PROCPOOL_DECL explicit PoolCore(Settings settings);
  PoolCore(const PoolCore&) = delete;
  PoolCore& operator=(const PoolCore&) = delete;
  /// Kills what still runs, and reaps it.
  PROCPOOL_DECL ~PoolCore() override;

  [[nodiscard]] PROCPOOL_DECL std::size_t size() const noexcept;
  [[nodiscard]] PROCPOOL_DECL const Settings& settings() const noexcept;

  /// The process that created this pool: only it can use the pool (workers and other children of
  /// it hold a copy of the object, not the pool).
  [[nodiscard]] PROCPOOL_DECL pid_t owner_pid() const noexcept;

  /// Throws procpool::Error when called from a progress callback of this pool: the callback runs
  /// with the pool's mutex held, so any call into the pool would deadlock.
  PROCPOOL_DECL void check_not_in_callback() const;

  /// Registers a callable (the function that rebuilds it in a worker, and its bytes); identical
  /// callables share an id, so a worker is sent a callable only when it switches to it.
  PROCPOOL_DECL std::uint64_t register_job(std::uintptr_t runner_factory, std::span<const std::byte> callable);

  /// Queues a batch of job `job` and starts sending its first chunks.
  PROCPOOL_DECL void add_batch(const std::shared_ptr<Batch>& batch, std::uint64_t job);

  PROCPOOL_DECL void wait(FunctionRef<bool()> done, std::optional<TimePoint> deadline) override;
  PROCPOOL_DECL void make_progress() override;
  PROCPOOL_DECL void forget(Batch& batch) noexcept override;
  PROCPOOL_DECL bool cancel(Batch& batch) override;
  /// Done callbacks run on the thread that drives the pool when the task settles, with the pool's
  /// mutex released: a caller waiting on the pool, or, if no caller does, the pool's progress
  /// thread, started the first time a callback waits and stopped when the pool shuts down.
  PROCPOOL_DECL void watch(std::shared_ptr<Batch> batch) override;

  /// Takes ownership of a pool of fresh workers serving a call of this pool (see Pool::place): its
  /// tasks run to completion whoever holds their Future, and this pool's join(), terminate() and
  /// destruction cover them. Fresh pools whose work is done are shut down on the way.
  PROCPOOL_DECL void adopt(std::shared_ptr<PoolCore> fresh);

  /// No new work may be submitted from now on.
  PROCPOOL_DECL void close();
  [[nodiscard]] PROCPOOL_DECL bool closed() const;
  /// True when nothing is queued or running.
  [[nodiscard]] PROCPOOL_DECL bool idle() const;

  /// Waits for all submitted work, then stops the workers and the zygote (graceful), or kills them
  /// at once, failing whatever had not finished (not graceful). Pools of fresh workers this pool
  /// adopted go the same way.
  PROCPOOL_DECL void shutdown(bool graceful);

  /// Throws procpool::Error if no work can be submitted (closed, terminated, or broken).
  PROCPOOL_DECL void ensure_usable() const;

  /// Pids of the live workers (for tests and diagnostics).
  [[nodiscard]] PROCPOOL_DECL std::vector<pid_t> worker_pids() const;

  /// What one worker's run of an item of `job` costs, as the workers measured it (smoothed over
  /// chunks); 0 until a chunk of it has finished.
  [[nodiscard]] PROCPOOL_DECL double job_ns_per_item(std::uint64_t job) const;

  [[nodiscard]] PROCPOOL_DECL std::mutex& mutex() const override;

 private:
  struct State;
  // Owned alone: when a done callback destroys the pool, the progress thread running it keeps only
  // the part of the state it still needs (callback_runner.hpp), not this.
  std::unique_ptr<State> s_;
};

}  // namespace procpool::detail

#ifndef PROCPOOL_SEPARATE_COMPILATION
#include "pool_core_impl.hpp"
#endif
