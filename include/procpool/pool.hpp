// procpool::Pool: persistent, pinned worker processes with map / try_map / imap / starmap / submit;
// procpool::cpu_count().
#pragma once

#include <unistd.h>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "codec.hpp"
#include "detail/batches.hpp"
#include "detail/call_checks.hpp"
#include "detail/closure_references.hpp"
#include "detail/pool_core.hpp"
#include "detail/runner.hpp"
#include "detail/settings.hpp"
#include "error.hpp"
#include "future.hpp"
#include "imap_results.hpp"
#include "options.hpp"
#include "outcome.hpp"

namespace procpool {

class Pool;

/// The number of CPUs this process may run on: those in its affinity mask (sched_getaffinity), so
/// `taskset` and cgroup cpusets are respected (a CPU quota, not being a mask, is not), where
/// std::thread::hardware_concurrency() may count the machine's. At least 1. Pool() starts this
/// many workers (as does a PoolOptions with `workers` 0).
[[nodiscard]] inline std::size_t cpu_count() { return std::max<std::size_t>(1, detail::allowed_cpus().size()); }

/// A fixed set of worker processes (Python's multiprocessing.Pool), forked once at construction
/// and pinned one per CPU. Work is cut into chunks handed out dynamically; results come back in
/// input order. A task that throws, crashes, exits or hangs past the timeout fails only its own
/// item: the worker is replaced and the pool stays usable.
///
/// Workers are forks of a snapshot of the caller taken when the pool was constructed: a callable
/// travels as its bytes (or its encoding), and any pointer it carries refers to that snapshot, not
/// to the caller's memory of today. Pass data as the input items.
///
/// Thread safety: a Pool may be used from several threads at once; calls are serialized
/// internally, and whichever thread waits drives the pool for everyone.
class Pool {
 public:
  /// One worker per CPU in the caller's affinity mask: cpu_count() workers.
  Pool() : Pool(options_with_workers(cpu_count())) {}
  /// `workers` worker processes.
  explicit Pool(std::size_t workers) : Pool(options_with_workers(workers)) {}
  /// A pool set up by `options`.
  explicit Pool(PoolOptions options)
      : core_(std::make_shared<detail::PoolCore>(detail::Settings::from(std::move(options)))) {}

  /// Takes over the pool; the moved-from Pool refuses calls.
  Pool(Pool&&) noexcept = default;
  /// Shuts this pool down (as the destructor does), then takes over `other`'s.
  Pool& operator=(Pool&& other) noexcept {
    if (this != &other) {
      shutdown_quietly();
      core_ = std::move(other.core_);
    }
    return *this;
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// Graceful: finishes the work already submitted, then stops and reaps every worker.
  ~Pool() { shutdown_quietly(); }

  /// The number of worker processes.
  [[nodiscard]] std::size_t size() const { return core().size(); }

  /// Applies `f` to every input in the workers; returns the results in input order. If items
  /// failed, throws the failure of the lowest-numbered one (RemoteError for an exception,
  /// ProcessError for a crash or exit, TimeoutError), after all items ran.
  ///
  /// `inputs`: any multi-pass range (a container, std::views::filter, std::views::iota(0) |
  /// std::views::take(n), ...) or a braced list; a range that does not know its size is counted
  /// first, by iterating it. Each item travels as the range's value type and is passed to `f` as
  /// an lvalue.
  template <class F, class Range>
  [[nodiscard]] auto map(F&& f, Range&& inputs, MapOptions options = {}) {
    constexpr auto problem = detail::call_problem<F, Range, detail::CallStyle::invoke, true>();
    PROCPOOL_DETAIL_CHECK_CALL(problem, "map", "imap");
    if constexpr (problem == detail::CallProblem::none) {
      auto batch = run_dense<detail::CallStyle::invoke>(std::forward<F>(f), inputs, std::move(options));
      std::lock_guard lock(core().mutex());
      return batch->take_values();
    }
  }
  /// map over a braced list: `pool.map(square, {1, 2, 3})`.
  template <class F, class T>
  [[nodiscard]] auto map(F&& f, std::initializer_list<T> inputs, MapOptions options = {}) {
    return map(std::forward<F>(f), std::vector<T>(inputs), std::move(options));
  }

  /// Like map, but decodes the results into `out` (resized to the number of inputs), into the
  /// elements it already holds: the memory they own (a vector's or a string's capacity) is
  /// reused, so a loop that maps large values again and again does not need fresh memory for its
  /// results each time. If items failed, throws like map; `out` then holds every other result,
  /// and value-initialised elements where items failed. If the pool itself fails (it was shut
  /// down meanwhile, or fresh workers for the call could not start), `out` is left empty.
  template <class F, class Range, class Out>
  void map_into(F&& f, Range&& inputs, std::vector<Out>& out, MapOptions options = {}) {
    constexpr auto problem = detail::call_problem<F, Range, detail::CallStyle::invoke, true>();
    PROCPOOL_DETAIL_CHECK_CALL(problem, "map_into", "imap");
    if constexpr (problem == detail::CallProblem::none) {
      using Inputs = std::remove_reference_t<Range>;
      using In = detail::range_item_t<Inputs>;
      static_assert(std::is_same_v<Out, detail::map_result_t<std::decay_t<F>, In>>,
                    "procpool::Pool::map_into: `out` must be a std::vector of the callable's result type");
      std::shared_ptr<detail::DenseBatch<std::ranges::iterator_t<Inputs>, std::ranges::sentinel_t<Inputs>, In, Out>>
          batch;
      try {
        batch = run_dense<detail::CallStyle::invoke>(std::forward<F>(f), inputs, std::move(options), std::move(out));
      } catch (...) {
        out.clear();
        throw;
      }
      std::lock_guard lock(core().mutex());
      batch->take_values_into(out);
    }
  }
  /// map_into over a braced list.
  template <class F, class T, class Out>
  void map_into(F&& f, std::initializer_list<T> inputs, std::vector<Out>& out, MapOptions options = {}) {
    map_into(std::forward<F>(f), std::vector<T>(inputs), out, std::move(options));
  }

  /// Like map, but never throws for an item: every item's value or error, in input order.
  template <class F, class Range>
  [[nodiscard]] auto try_map(F&& f, Range&& inputs, MapOptions options = {}) {
    constexpr auto problem = detail::call_problem<F, Range, detail::CallStyle::invoke, true>();
    PROCPOOL_DETAIL_CHECK_CALL(problem, "try_map", "imap");
    if constexpr (problem == detail::CallProblem::none) {
      auto batch = run_dense<detail::CallStyle::invoke>(std::forward<F>(f), inputs, std::move(options));
      std::lock_guard lock(core().mutex());
      return batch->take_outcomes();
    }
  }
  /// try_map over a braced list.
  template <class F, class T>
  [[nodiscard]] auto try_map(F&& f, std::initializer_list<T> inputs, MapOptions options = {}) {
    return try_map(std::forward<F>(f), std::vector<T>(inputs), std::move(options));
  }

  /// Lazily maps `f` over `inputs`, yielding results in input order as they become available.
  /// `inputs` may be single-pass (std::views::istream) or endless; it is iterated as results are
  /// consumed. An lvalue range must outlive the iteration; an rvalue range (a view, a braced
  /// list) is kept by the result.
  template <class F, class Range>
  [[nodiscard]] auto imap(F&& f, Range&& inputs, MapOptions options = {}) {
    constexpr auto problem = detail::call_problem<F, Range, detail::CallStyle::invoke, false>();
    PROCPOOL_DETAIL_CHECK_CALL(problem, "imap", "imap");
    if constexpr (problem == detail::CallProblem::none)
      return make_stream<detail::CallStyle::invoke>(std::forward<F>(f), std::forward<Range>(inputs), std::move(options),
                                                    /*ordered=*/true);
  }
  /// imap over a braced list (copied into the result).
  template <class F, class T>
  [[nodiscard]] auto imap(F&& f, std::initializer_list<T> inputs, MapOptions options = {}) {
    return imap(std::forward<F>(f), std::vector<T>(inputs), std::move(options));
  }

  /// Like imap, but yields results as they complete, whatever their input order.
  template <class F, class Range>
  [[nodiscard]] auto imap_unordered(F&& f, Range&& inputs, MapOptions options = {}) {
    constexpr auto problem = detail::call_problem<F, Range, detail::CallStyle::invoke, false>();
    PROCPOOL_DETAIL_CHECK_CALL(problem, "imap_unordered", "imap_unordered");
    if constexpr (problem == detail::CallProblem::none)
      return make_stream<detail::CallStyle::invoke>(std::forward<F>(f), std::forward<Range>(inputs), std::move(options),
                                                    /*ordered=*/false);
  }
  /// imap_unordered over a braced list (copied into the result).
  template <class F, class T>
  [[nodiscard]] auto imap_unordered(F&& f, std::initializer_list<T> inputs, MapOptions options = {}) {
    return imap_unordered(std::forward<F>(f), std::vector<T>(inputs), std::move(options));
  }

  /// Python's Pool.starmap: each input item is a std::tuple, std::pair or std::array of `f`'s
  /// arguments, and `f(std::get<0>(item), std::get<1>(item), ...)` runs for it in the workers
  /// (the elements as lvalues). Results come in input order; failures are thrown as by map.
  /// `items`: as for map; a braced list needs typed items: `{std::pair{1, 2}, std::pair{3, 4}}`.
  template <class F, class Range>
  [[nodiscard]] auto starmap(F&& f, Range&& items, MapOptions options = {}) {
    constexpr auto problem = detail::call_problem<F, Range, detail::CallStyle::apply, true>();
    PROCPOOL_DETAIL_CHECK_CALL(problem, "starmap", "istarmap");
    if constexpr (problem == detail::CallProblem::none) {
      auto batch = run_dense<detail::CallStyle::apply>(std::forward<F>(f), items, std::move(options));
      std::lock_guard lock(core().mutex());
      return batch->take_values();
    }
  }
  /// starmap over a braced list: `pool.starmap(add, {std::pair{1, 2}, std::pair{3, 4}})`.
  template <class F, class T>
  [[nodiscard]] auto starmap(F&& f, std::initializer_list<T> items, MapOptions options = {}) {
    return starmap(std::forward<F>(f), std::vector<T>(items), std::move(options));
  }

  /// Like starmap, but never throws for an item: every item's value or error, in input order.
  template <class F, class Range>
  [[nodiscard]] auto try_starmap(F&& f, Range&& items, MapOptions options = {}) {
    constexpr auto problem = detail::call_problem<F, Range, detail::CallStyle::apply, true>();
    PROCPOOL_DETAIL_CHECK_CALL(problem, "try_starmap", "istarmap");
    if constexpr (problem == detail::CallProblem::none) {
      auto batch = run_dense<detail::CallStyle::apply>(std::forward<F>(f), items, std::move(options));
      std::lock_guard lock(core().mutex());
      return batch->take_outcomes();
    }
  }
  /// try_starmap over a braced list.
  template <class F, class T>
  [[nodiscard]] auto try_starmap(F&& f, std::initializer_list<T> items, MapOptions options = {}) {
    return try_starmap(std::forward<F>(f), std::vector<T>(items), std::move(options));
  }

  /// Lazy starmap, as imap is to map: results in input order as they become available.
  template <class F, class Range>
  [[nodiscard]] auto istarmap(F&& f, Range&& items, MapOptions options = {}) {
    constexpr auto problem = detail::call_problem<F, Range, detail::CallStyle::apply, false>();
    PROCPOOL_DETAIL_CHECK_CALL(problem, "istarmap", "istarmap");
    if constexpr (problem == detail::CallProblem::none)
      return make_stream<detail::CallStyle::apply>(std::forward<F>(f), std::forward<Range>(items), std::move(options),
                                                   /*ordered=*/true);
  }
  /// istarmap over a braced list (copied into the result).
  template <class F, class T>
  [[nodiscard]] auto istarmap(F&& f, std::initializer_list<T> items, MapOptions options = {}) {
    return istarmap(std::forward<F>(f), std::vector<T>(items), std::move(options));
  }

  /// Runs `f(args...)` in a worker; the Future gives its result.
  template <class F, class... Args>
    requires(!std::same_as<std::remove_cvref_t<F>, TaskOptions>)
  [[nodiscard]] auto submit(F&& f, Args&&... args) {
    return submit(TaskOptions{}, std::forward<F>(f), std::forward<Args>(args)...);
  }

  /// submit with per-task limits: `pool.submit(procpool::TaskOptions{.timeout = 2s}, f, x)`.
  template <class F, class... Args>
  [[nodiscard]] auto submit(TaskOptions options, F&& f, Args&&... args) {
    using Fn = std::decay_t<F>;
    using Tuple = std::tuple<std::decay_t<Args>...>;
    static_assert(std::invocable<Fn&, std::decay_t<Args>&...>,
                  "procpool::Pool::submit: the callable cannot be called with these arguments");
    static_assert(Encodable<Tuple>,
                  "procpool::Pool::submit: every argument must be encodable (see procpool/codec.hpp)");
    using R = std::remove_cvref_t<std::invoke_result_t<Fn&, std::decay_t<Args>&...>>;
    static_assert(std::is_void_v<R> || Encodable<R>,
                  "procpool::Pool::submit: the result type must be encodable (see procpool/codec.hpp)");
    Placement where = place<Tuple, detail::CallStyle::apply>(f, 1);
    auto batch = std::make_shared<detail::SubmitBatch<Tuple, R>>(Tuple(std::forward<Args>(args)...),
                                                                 options.task_timeout, options.timeout);
    where.core->add_batch(batch, where.job);
    // The task belongs to the pool, not to its Future: it runs to completion if the Future is
    // dropped, and the pool's join(), terminate() and destructor cover it.
    if (where.core != core_) core().adopt(where.core);
    return Future<R>(std::move(where.core), std::move(batch));
  }

  /// Refuses new work from now on; work already submitted still runs.
  void close() { core().close(); }

  /// Waits for all submitted work and for the workers to exit. Call close() first.
  void join() {
    if (!core().closed()) throw Error("procpool::Pool::join: call close() (or terminate()) before join()");
    core().shutdown(/*graceful=*/true);
  }

  /// Kills the workers at once; items not yet finished fail with procpool::Error.
  void terminate() { core().shutdown(/*graceful=*/false); }

  /// The process ids of the live workers (they change as workers are replaced).
  [[nodiscard]] std::vector<pid_t> worker_pids() const { return core().worker_pids(); }

 private:
  static PoolOptions options_with_workers(std::size_t workers) {
    PoolOptions options;
    options.workers = workers;
    return options;
  }

  [[nodiscard]] detail::PoolCore& core() const {
    // A worker holds a copy of the caller's memory, Pool objects included, but not their pools.
    if (detail::inside_pool_worker() && (!core_ || core_->owner_pid() != ::getpid()))
      throw Error("procpool::Pool: a task used a Pool of the caller; tasks run in worker processes, which cannot "
                  "use the caller's pools (return what the task found and call the pool from the caller, or create "
                  "a Pool inside the task)");
    if (!core_) throw Error("procpool::Pool: this pool was moved from");
    core_->check_not_in_callback();
    return *core_;
  }

  void shutdown_quietly() noexcept {
    if (!core_) return;
    try {
      core_->shutdown(/*graceful=*/true);
    } catch (...) {
      try {
        core_->shutdown(/*graceful=*/false);
      } catch (...) {
        // Nothing more can be done in a destructor.
      }
    }
  }

  /// Where a call runs, and the job it runs as there.
  struct Placement {
    std::shared_ptr<detail::PoolCore> core;
    std::uint64_t job;
  };

  /// A callable that can travel runs in the persistent workers. Any other callable runs in fresh
  /// workers forked for this call: they are forks taken now, so they hold the callable itself, and
  /// it is called through its address. That costs a pool start-up (about a millisecond plus the
  /// page-table copy of a fork) per call, and forks from the calling process as Process does.
  /// A callable that travels as its bytes but carries a pointer into memory that may have changed
  /// since the workers were forked (a `[&]` lambda) takes the fresh path too (see
  /// detail::may_reference_changing_memory), unless wrapped in use_snapshot. `items`: how many
  /// items the call has, if known (no more fresh workers than that are forked).
  template <class In, detail::CallStyle Style, class F>
  Placement place(F& f, std::optional<std::size_t> items) {
    using Fn = std::decay_t<F>;
    core().ensure_usable();
    if constexpr (detail::TravellingCallable<Fn>) {
      const Fn& g = f;
      if (!detail::reads_callers_current_memory(g)) return {core_, register_on<Fn, In, Style>(core(), g)};
      // Its bytes travel as usual, to workers whose snapshot is today's memory.
      auto fresh = fresh_core(items);
      const std::uint64_t job = register_on<Fn, In, Style>(*fresh, g);
      return {std::move(fresh), job};
    } else {
      using Through = detail::CallThrough<std::remove_reference_t<F>>;
      auto fresh = fresh_core(items);
      const std::uint64_t job = register_on<Through, In, Style>(*fresh, Through{&f});
      return {std::move(fresh), job};
    }
  }

  /// Fresh workers for one call: as many as the pool has, but no more than the call has items.
  [[nodiscard]] std::shared_ptr<detail::PoolCore> fresh_core(std::optional<std::size_t> items) const {
    detail::Settings settings = core_->settings();
    if (items) settings.workers = std::clamp<std::size_t>(*items, 1, settings.workers);
    return std::make_shared<detail::PoolCore>(std::move(settings));
  }

  /// Ends a map's use of its batch on every path out of the call: the pool forgets the batch (it
  /// never touches the caller's input again), and fresh workers forked for the call stop.
  struct CallEnd {
    std::shared_ptr<detail::PoolCore> core;
    std::shared_ptr<detail::Batch> batch;
    bool fresh;
    CallEnd(std::shared_ptr<detail::PoolCore> c, std::shared_ptr<detail::Batch> b, bool is_fresh)
        : core(std::move(c)), batch(std::move(b)), fresh(is_fresh) {}
    CallEnd(const CallEnd&) = delete;
    CallEnd& operator=(const CallEnd&) = delete;
    ~CallEnd() {
      core->forget(*batch);
      if (!fresh) return;
      try {
        core->shutdown(/*graceful=*/batch->finished());
      } catch (...) {
        try {
          core->shutdown(/*graceful=*/false);
        } catch (...) {
          // Its destructor kills what is left.
        }
      }
    }
  };

  template <class Fn, class In, detail::CallStyle Style>
  static std::uint64_t register_on(detail::PoolCore& core, const Fn& f) {
    detail::Buffer bytes;
    detail::encode_callable(f, bytes);
    return core.register_job(reinterpret_cast<std::uintptr_t>(&detail::Runner<Fn, In, Style>::make), bytes.view());
  }

  /// Runs a map-like call to completion (its types checked by call_problem). `storage`: the vector
  /// to decode the results into (map_into).
  template <detail::CallStyle Style, class F, class Range, class... Storage>
  auto run_dense(F&& f, Range& inputs, MapOptions options, Storage&&... storage) {
    using Fn = std::decay_t<F>;
    using In = detail::range_item_t<Range>;
    using Out = detail::item_result_t<Fn, In, Style>;
    using Dense = detail::DenseBatch<std::ranges::iterator_t<Range>, std::ranges::sentinel_t<Range>, In, Out>;
    // A sized range gives its size; any other (std::views::filter, a take of an unbounded iota) is
    // counted by iterating it, which a multi-pass range allows.
    const auto size = static_cast<std::size_t>(std::ranges::distance(inputs));
    Placement where = place<In, Style>(f, size);
    auto batch = std::make_shared<Dense>(std::ranges::begin(inputs), std::ranges::end(inputs), size, std::move(options),
                                         std::move(storage)...);
    where.core->add_batch(batch, where.job);
    const CallEnd end_of_call{where.core, batch, where.core != core_};
    where.core->wait_until([&] { return batch->settled(); });
    if (batch->caller_error()) std::rethrow_exception(batch->caller_error());
    return batch;
  }

  /// Starts a lazy call (its types checked by call_problem).
  template <detail::CallStyle Style, class F, class Range>
  auto make_stream(F&& f, Range&& inputs, MapOptions options, bool ordered) {
    using Fn = std::decay_t<F>;
    using Stored = std::remove_cvref_t<Range>;
    using Inputs = std::remove_reference_t<Range>;  // iterated as given: a const lvalue stays const
    // An rvalue range (a view, a temporary container) is moved into shared storage that the
    // results keep alive: the iterators the batch holds point into it.
    std::shared_ptr<Stored> owned;
    Inputs* range = &inputs;
    if constexpr (!std::is_lvalue_reference_v<Range>) {
      owned = std::make_shared<Stored>(std::forward<Range>(inputs));
      range = owned.get();
    }
    using In = detail::range_item_t<Inputs>;
    using Out = detail::item_result_t<Fn, In, Style>;
    using Stream = detail::StreamRangeBatch<std::ranges::iterator_t<Inputs>, std::ranges::sentinel_t<Inputs>, In, Out>;
    // Only a sized range is counted up front: another may be single-pass or endless.
    std::optional<std::size_t> size;
    if constexpr (std::ranges::sized_range<Inputs&>) size = static_cast<std::size_t>(std::ranges::size(*range));
    Placement where = place<In, Style>(f, size);
    auto batch = std::make_shared<Stream>(std::move(owned), std::ranges::begin(*range), std::ranges::end(*range), size,
                                          std::move(options), ordered, size_hint());
    where.core->add_batch(batch, where.job);
    if (where.core != core_) core().adopt(where.core);
    return ImapResults<Out>(std::move(where.core), std::move(batch));
  }

  [[nodiscard]] std::size_t size_hint() const { return core().size(); }

  std::shared_ptr<detail::PoolCore> core_;
};

}  // namespace procpool

#undef PROCPOOL_DETAIL_CHECK_CALL
