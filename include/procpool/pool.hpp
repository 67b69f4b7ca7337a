// procpool::Pool: persistent, pinned worker processes with map / try_map / imap / submit.
#pragma once

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "codec.hpp"
#include "detail/batches.hpp"
#include "detail/closure_references.hpp"
#include "detail/pool_core.hpp"
#include "detail/settings.hpp"
#include "detail/worker.hpp"
#include "error.hpp"
#include "future.hpp"
#include "imap_results.hpp"
#include "options.hpp"
#include "outcome.hpp"

namespace procpool {

class Pool;

namespace detail {

template <class F, class In>
using map_result_t = std::remove_cvref_t<std::invoke_result_t<F&, In&>>;

/// Whether a callable that would travel to the workers as its bytes carries a pointer into memory
/// that may have changed since the workers were forked (a `[&]` lambda, a captured `this`): its
/// workers' snapshot would be stale, so it runs in fresh workers forked for the call instead.
template <class F>
[[nodiscard]] bool reads_callers_current_memory(const F& f) noexcept {
  // A function pointer points to code, which the snapshot shares: nothing to check.
  if constexpr (is_use_snapshot_v<F> || !std::is_trivially_copyable_v<F> ||
                (std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>) ||
                std::is_member_function_pointer_v<F>)
    return false;
  else
    return callable_may_reference_changing_memory(f);
}

/// Calls a callable that stays in the parent's memory, through its address. Only valid in workers
/// forked after the callable was created: see Pool's "fresh workers".
template <class F>
struct CallThrough {
  F* f;
  template <class... Args>
  decltype(auto) operator()(Args&&... args) const {
    return std::invoke(*f, std::forward<Args>(args)...);
  }
};

}  // namespace detail

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
  /// One worker per CPU in the caller's affinity mask.
  Pool() : Pool(PoolOptions{}) {}
  /// `workers` worker processes.
  explicit Pool(std::size_t workers) : Pool(options_with_workers(workers)) {}
  /// A pool set up by `options`.
  explicit Pool(PoolOptions options)
      : core_(std::make_shared<detail::PoolCore>(detail::Settings::from(std::move(options)))) {}

  Pool(Pool&&) noexcept = default;
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
  template <class F, class Range>
  [[nodiscard]] auto map(F&& f, const Range& inputs, MapOptions options = {}) {
    auto batch = run_dense(std::forward<F>(f), inputs, std::move(options));
    std::lock_guard lock(core().mutex());
    return batch->take_values();
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
  void map_into(F&& f, const Range& inputs, std::vector<Out>& out, MapOptions options = {}) {
    using std::begin;
    using std::end;
    using In = std::remove_cvref_t<decltype(*begin(inputs))>;
    if constexpr (std::invocable<std::decay_t<F>&, In&>) {  // otherwise run_dense says what is wrong
      static_assert(std::is_same_v<Out, detail::map_result_t<std::decay_t<F>, In>>,
                    "procpool::Pool::map_into: `out` must be a std::vector of the callable's result type");
    }
    std::shared_ptr<detail::DenseBatch<decltype(begin(inputs)), decltype(end(inputs)), In, Out>> batch;
    try {
      batch = run_dense(std::forward<F>(f), inputs, std::move(options), std::move(out));
    } catch (...) {
      out.clear();
      throw;
    }
    std::lock_guard lock(core().mutex());
    batch->take_values_into(out);
  }

  /// Like map, but never throws for an item: every item's value or error, in input order.
  template <class F, class Range>
  [[nodiscard]] auto try_map(F&& f, const Range& inputs, MapOptions options = {}) {
    auto batch = run_dense(std::forward<F>(f), inputs, std::move(options));
    std::lock_guard lock(core().mutex());
    return batch->take_outcomes();
  }

  /// Lazily maps `f` over `inputs`, yielding results in input order as they become available.
  /// An lvalue range must outlive the iteration; an rvalue range is kept by the result.
  template <class F, class Range>
  [[nodiscard]] auto imap(F&& f, Range&& inputs, MapOptions options = {}) {
    return make_stream(std::forward<F>(f), std::forward<Range>(inputs), std::move(options), /*ordered=*/true);
  }

  /// Like imap, but yields results as they complete, whatever their input order.
  template <class F, class Range>
  [[nodiscard]] auto imap_unordered(F&& f, Range&& inputs, MapOptions options = {}) {
    return make_stream(std::forward<F>(f), std::forward<Range>(inputs), std::move(options), /*ordered=*/false);
  }

  /// Runs `f(args...)` in a worker; the Future gives its result.
  template <class F, class... Args>
  [[nodiscard]] auto submit(F&& f, Args&&... args) {
    using Fn = std::decay_t<F>;
    using Tuple = std::tuple<std::decay_t<Args>...>;
    static_assert(std::invocable<Fn&, std::decay_t<Args>&...>,
                  "procpool::Pool::submit: the callable cannot be called with these arguments");
    static_assert(Encodable<Tuple>, "procpool::Pool::submit: every argument must be encodable (see procpool/codec.hpp)");
    using R = std::remove_cvref_t<std::invoke_result_t<Fn&, std::decay_t<Args>&...>>;
    static_assert(std::is_void_v<R> || Encodable<R>,
                  "procpool::Pool::submit: the result type must be encodable (see procpool/codec.hpp)");
    Placement where = place<Tuple, detail::CallStyle::apply>(f, 1);
    auto batch = std::make_shared<detail::SubmitBatch<Tuple, R>>(Tuple(std::forward<Args>(args)...));
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

  detail::PoolCore& core() const {
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
  std::shared_ptr<detail::PoolCore> fresh_core(std::optional<std::size_t> items) const {
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

  template <class F, class In>
  static constexpr void check_map_types() {
    using Fn = std::decay_t<F>;
    static_assert(Encodable<In>, "procpool::Pool::map: the input items must be encodable (see procpool/codec.hpp)");
    static_assert(std::invocable<Fn&, In&>, "procpool::Pool::map: the callable cannot be called with an input item");
    static_assert(!std::is_void_v<std::invoke_result_t<Fn&, In&>>,
                  "procpool::Pool::map: the callable returns void; map needs a result per item (return a value, "
                  "or use submit for side effects)");
    static_assert(Encodable<detail::map_result_t<Fn, In>>,
                  "procpool::Pool::map: the callable's result must be encodable (see procpool/codec.hpp)");
  }

  /// Runs a map to completion. `storage`: the vector to decode the results into (map_into).
  template <class F, class Range, class... Storage>
  auto run_dense(F&& f, const Range& inputs, MapOptions options, Storage&&... storage) {
    using std::begin;
    using std::end;
    using Fn = std::decay_t<F>;
    using It = decltype(begin(inputs));
    using Sent = decltype(end(inputs));
    using In = std::remove_cvref_t<decltype(*begin(inputs))>;
    check_map_types<F, In>();
    using Out = detail::map_result_t<Fn, In>;
    static_assert(std::forward_iterator<It>,
                  "procpool::Pool::map needs a multi-pass range; use imap for a single-pass input");
    const auto size = static_cast<std::size_t>(std::distance(begin(inputs), end(inputs)));
    Placement where = place<In, detail::CallStyle::invoke>(f, size);
    auto batch = std::make_shared<detail::DenseBatch<It, Sent, In, Out>>(begin(inputs), end(inputs), size,
                                                                          std::move(options), std::move(storage)...);
    where.core->add_batch(batch, where.job);
    const CallEnd end_of_call{where.core, batch, where.core != core_};
    where.core->wait_until([&] { return batch->settled(); });
    if (batch->caller_error()) std::rethrow_exception(batch->caller_error());
    return batch;
  }

  template <class F, class Range>
  auto make_stream(F&& f, Range&& inputs, MapOptions options, bool ordered) {
    using Fn = std::decay_t<F>;
    using Stored = std::remove_cvref_t<Range>;
    // An rvalue range is moved into shared storage that the results keep alive.
    std::shared_ptr<Stored> owned;
    const Stored* range = &inputs;
    if constexpr (!std::is_lvalue_reference_v<Range>) {
      owned = std::make_shared<Stored>(std::move(inputs));
      range = owned.get();
    }
    using std::begin;
    using std::end;
    using It = decltype(begin(*range));
    using Sent = decltype(end(*range));
    using In = std::remove_cvref_t<decltype(*begin(*range))>;
    check_map_types<F, In>();
    using Out = detail::map_result_t<Fn, In>;
    std::optional<std::size_t> size;
    if constexpr (requires { std::size(*range); }) size = static_cast<std::size_t>(std::size(*range));
    Placement where = place<In, detail::CallStyle::invoke>(f, size);
    auto batch = std::make_shared<detail::StreamRangeBatch<It, Sent, In, Out>>(
        std::move(owned), begin(*range), end(*range), size, std::move(options), ordered, size_hint());
    where.core->add_batch(batch, where.job);
    if (where.core != core_) core().adopt(where.core);
    return ImapResults<Out>(std::move(where.core), std::move(batch));
  }

  [[nodiscard]] std::size_t size_hint() const { return core().size(); }

  std::shared_ptr<detail::PoolCore> core_;
};

}  // namespace procpool
