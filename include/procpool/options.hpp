// procpool: the settings of a Pool (PoolOptions) and of one call on it (MapOptions).
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>

namespace procpool {

/// How a Pool is set up. Fields keep this order; new ones are added after them.
struct PoolOptions {
  /// Number of worker processes; 0 means one per CPU in the caller's affinity mask.
  std::size_t workers = 0;
  /// Pin worker i to the i-th allowed CPU (round-robin over the caller's affinity mask, so
  /// `taskset` and cgroup cpusets are respected).
  bool pin_cpus = true;
  /// Items per message; 0 sizes chunks automatically (about a millisecond of work each).
  std::size_t chunk_size = 0;
  /// Replace a worker after it ran this many items (like Python's maxtasksperchild); 0: never.
  std::size_t max_tasks_per_worker = 0;
  /// An item running longer than this fails with TimeoutError and its worker is killed and
  /// replaced; 0: no limit. Any duration converts: `500us`, `100ms`, `2s`.
  std::chrono::nanoseconds task_timeout{0};
  /// Runs once in each worker (and each replacement) before its first task, e.g. to open a
  /// per-worker resource. If it throws, the pool is broken: calls fail with procpool::Error.
  std::function<void()> initializer{};
};

/// Per-call settings of map, try_map and imap.
struct MapOptions {
  /// Items per message for this call; 0 uses the pool's setting.
  std::size_t chunk_size = 0;
  /// Called as outcomes arrive with (items done, total items; 0 while unknown). It runs on the
  /// thread waiting on the pool and must not call into the pool.
  std::function<void(std::size_t done, std::size_t total)> on_progress{};
  /// An item of this call running longer than this fails with TimeoutError (its worker is killed
  /// and replaced); 0: the pool's task_timeout.
  std::chrono::nanoseconds task_timeout{0};
  /// A deadline for the whole call, counted from the call: items without an outcome by then fail
  /// with TimeoutError, those running are killed (their workers replaced), and the pool goes on; 0: none.
  std::chrono::nanoseconds timeout{0};
};

/// Per-task settings of submit (pass them first: `pool.submit(procpool::TaskOptions{.timeout = 2s}, f, x)`).
struct TaskOptions {
  /// The task fails with TimeoutError if it runs longer than this (its worker is killed and
  /// replaced); 0: the pool's task_timeout.
  std::chrono::nanoseconds task_timeout{0};
  /// A deadline counted from submit(), queueing included: the task fails with TimeoutError if it has
  /// not finished by then (killed if it runs); 0: none.
  std::chrono::nanoseconds timeout{0};
};

}  // namespace procpool
