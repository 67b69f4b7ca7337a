// procpool::Pool: persistent, pinned worker processes with map / try_map / imap / submit.
#pragma once

#include <sched.h>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <exception>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "codec.hpp"
#include "detail/closure_references.hpp"
#include "detail/pool_core.hpp"
#include "detail/worker.hpp"
#include "error.hpp"
#include "outcome.hpp"

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
  /// replaced; 0: no limit.
  std::chrono::milliseconds task_timeout{0};
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
};

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

/// The batch of a map / try_map / imap call over an iterator range, with either dense storage
/// (map, try_map: every outcome kept in input order) or a stream (imap: outcomes handed out and
/// forgotten, memory bounded by a window).
template <class It, class Sent, class In, class Out>
class RangeBatch final : public Batch {
 public:
  /// `storage`: for map_into, the caller's vector, whose elements the results are decoded into
  /// (so that the memory they own is reused).
  RangeBatch(It first, Sent last, std::optional<std::size_t> size, MapOptions options, bool stream, bool ordered,
             std::size_t workers, std::vector<Out> storage = {})
      : it_(std::move(first)), end_(std::move(last)), options_(std::move(options)), stream_(stream),
        ordered_(ordered), workers_(workers), values_(std::move(storage)) {
    chunk_size = options_.chunk_size;
    if (size) {
      total = *size;
      total_known = true;
      if (total == 0) source_done = true;
      if (!stream_) values_.resize(total);
    }
  }

  std::size_t encode_next(std::size_t max_items, std::size_t max_bytes, Buffer& out) override {
    const std::size_t start = out.size();
    std::size_t n = 0;
    if constexpr (std::contiguous_iterator<It> && std::same_as<It, Sent> && is_bitwise_codec_v<In>) {
      // Contiguous trivially-encoded inputs: one memcpy for the whole chunk.
      n = std::min<std::size_t>(max_items, static_cast<std::size_t>(end_ - it_));
      n = std::min(n, std::max<std::size_t>(1, max_bytes / sizeof(In)));
      out.append(std::to_address(it_), n * sizeof(In));
      it_ += static_cast<std::ptrdiff_t>(n);
    } else {
      Encoder e(out);
      while (n < max_items && it_ != end_ && (n == 0 || out.size() - start < max_bytes)) {
        encode(e, static_cast<const In&>(*it_));
        ++it_;
        ++n;
      }
    }
    encoded_bytes_ += out.size() - start;
    return n;
  }

  void accept_value(std::size_t index, Decoder& in) override {
    if (!stream_) {
      if constexpr (std::is_same_v<Out, bool>) {
        bool v = false;
        decode(in, v);
        values_[index] = v;
      } else {
        decode(in, values_[index]);
      }
    } else {
      Out v{};
      decode(in, v);
      ready(index, Outcome<Out>(std::move(v)));
    }
  }

  bool accept_bulk(std::size_t first, std::size_t count, std::span<const std::byte> bytes) override {
    if constexpr (is_bitwise_codec_v<Out> && !std::is_same_v<Out, bool>) {
      if (stream_) return false;
      if (bytes.size() != count * sizeof(Out)) throw DecodeError("procpool: results of the wrong size");
      std::memcpy(static_cast<void*>(values_.data() + first), bytes.data(), bytes.size());
      return true;
    } else {
      (void)first, (void)count, (void)bytes;
      return false;
    }
  }

  void accept_error(std::size_t index, std::exception_ptr error) override {
    if (!stream_) {
      errors_.emplace(index, std::move(error));
    } else {
      ready(index, Outcome<Out>(std::move(error)));
    }
  }

  void on_progress() override {
    if (options_.on_progress && completed != reported_) {
      reported_ = completed;
      options_.on_progress(completed, total_known ? total : 0);
    }
  }

  /// imap keeps at most about 64 MiB of items outstanding (dispatched and not yet consumed), counting
  /// each by the larger of its input's and its result's encoded size, and at least 4 per worker.
  [[nodiscard]] std::size_t room() const override {
    if (!stream_) return SIZE_MAX;
    const std::size_t input = dispatched > 0 ? std::max<std::size_t>(1, encoded_bytes_ / dispatched) : 64;
    const std::size_t result = results_counted_ > 0 ? result_bytes_ / results_counted_ : 0;
    const std::size_t average = std::max(input, result);
    const std::size_t limit = std::clamp<std::size_t>((std::size_t{64} << 20) / average, 4 * workers_, 1 << 16);
    const std::size_t outstanding = dispatched - consumed;
    return outstanding >= limit ? 0 : limit - outstanding;
  }

  void note_results(std::size_t count, std::size_t bytes) override {
    results_counted_ += count;
    result_bytes_ += bytes;
  }

  [[nodiscard]] bool streaming() const override { return stream_; }

  // ---- the caller's side (with the core's mutex held) ----

  /// map: the values, or the failure of the lowest-numbered failed item.
  std::vector<Out> take_values() {
    if (!errors_.empty()) std::rethrow_exception(errors_.begin()->second);
    return std::move(values_);
  }

  /// map_into: the values, failed items' elements value-initialised; then the failure of the
  /// lowest-numbered failed item is thrown, as by map.
  void take_values_into(std::vector<Out>& out) {
    for (const auto& [index, error] : errors_) values_[index] = Out{};
    out = std::move(values_);
    if (!errors_.empty()) std::rethrow_exception(errors_.begin()->second);
  }

  /// try_map: every item's outcome.
  std::vector<Outcome<Out>> take_outcomes() {
    std::vector<Outcome<Out>> out;
    out.reserve(values_.size());
    for (std::size_t i = 0; i < values_.size(); ++i) {
      const auto e = errors_.find(i);
      if (e != errors_.end()) {
        out.emplace_back(e->second);
      } else {
        out.emplace_back(std::move(values_[i]));
      }
    }
    return out;
  }

  /// imap: whether the next outcome is available (or the stream is over).
  [[nodiscard]] bool has_next() const {
    if (ordered_) return !stream_ready_.empty() && stream_ready_.begin()->first == next_index_;
    return !stream_ready_.empty();
  }
  [[nodiscard]] bool exhausted() const { return source_done && next_index_ >= total && stream_ready_.empty(); }

  Outcome<Out> take_next() {
    auto node = stream_ready_.extract(stream_ready_.begin());
    ++next_index_;
    ++consumed;
    return std::move(node.mapped());
  }

  /// imap, once no outcome is ready: throws why the stream ended early, if it did (once).
  void throw_if_ended_early() {
    if (caller_error && !reported_end_) {
      reported_end_ = true;
      std::rethrow_exception(caller_error);
    }
    if (cut_reason && !reported_end_ && !caller_error) {
      reported_end_ = true;
      throw Error(*cut_reason);
    }
  }

 private:
  void ready(std::size_t index, Outcome<Out> outcome) {
    // Unordered imap hands out in arrival order: the key is then the arrival number.
    const std::size_t key = ordered_ ? index : arrivals_++;
    stream_ready_.emplace(key, std::move(outcome));
  }

  It it_;
  Sent end_;
  MapOptions options_;
  bool stream_;
  bool ordered_;
  std::size_t workers_;
  std::size_t encoded_bytes_ = 0;
  std::size_t result_bytes_ = 0;
  std::size_t results_counted_ = 0;
  std::size_t reported_ = 0;
  std::vector<Out> values_;
  std::map<std::size_t, std::exception_ptr> errors_;
  std::map<std::size_t, Outcome<Out>> stream_ready_;
  std::size_t next_index_ = 0;
  std::size_t arrivals_ = 0;
  bool reported_end_ = false;
};

/// The batch of one submit(): one item, the arguments, and where its outcome goes.
template <class Args, class R>
class SubmitBatch final : public Batch {
 public:
  explicit SubmitBatch(Args args) : args_(std::move(args)) {
    total = 1;
    total_known = true;
  }

  std::size_t encode_next(std::size_t max_items, std::size_t, Buffer& out) override {
    if (max_items == 0 || sent_) return 0;
    Encoder e(out);
    encode(e, args_);
    sent_ = true;
    return 1;
  }
  void accept_value(std::size_t, Decoder& in) override {
    if constexpr (!std::is_void_v<R>) {
      R v{};
      decode(in, v);
      value_.emplace(std::move(v));
    }
  }
  bool accept_bulk(std::size_t, std::size_t, std::span<const std::byte>) override { return false; }
  void accept_error(std::size_t, std::exception_ptr error) override { error_ = std::move(error); }
  [[nodiscard]] std::string describe(std::size_t) const override { return "the submitted task"; }

  /// The outcome; called once, after the batch settled.
  R take() {
    if (caller_error) std::rethrow_exception(caller_error);
    if (error_) std::rethrow_exception(error_);
    if constexpr (!std::is_void_v<R>) return std::move(*value_);
  }

 private:
  Args args_;
  bool sent_ = false;
  std::conditional_t<std::is_void_v<R>, char, std::optional<std::conditional_t<std::is_void_v<R>, char, R>>> value_{};
  std::exception_ptr error_;
};

/// The CPUs of the caller's affinity mask, in order.
[[nodiscard]] inline std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

}  // namespace detail

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
  [[nodiscard]] bool valid() const noexcept { return state_ != nullptr; }

  /// True once the task has an outcome. Does not wait, but does the pool's pending work that
  /// takes no waiting (reads results that arrived), so polling sees the task finish.
  [[nodiscard]] bool ready() const {
    check_valid();
    core_->make_progress();
    std::lock_guard lock(core_->mutex());
    return state_->finished();
  }

  /// Waits for the outcome.
  void wait() const {
    check_valid();
    core_->wait_until([&] { return state_->finished(); });
  }

  /// Waits at most `timeout` (zero: only polls, like ready()); true if the outcome is there.
  template <class Rep, class Period>
  [[nodiscard]] bool wait_for(std::chrono::duration<Rep, Period> timeout) const {
    check_valid();
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    core_->make_progress();
    core_->wait_until([&] { return state_->finished() || std::chrono::steady_clock::now() >= deadline; },
                      deadline);
    std::lock_guard lock(core_->mutex());
    return state_->finished();
  }

  /// Waits, then returns the task's value or throws its failure (RemoteError, ProcessError,
  /// TimeoutError). The result is taken: afterwards valid() is false.
  R get() {
    wait();
    auto state = std::move(state_);
    auto core = std::move(core_);
    std::unique_lock lock(core->mutex());
    return state->take();
  }

 private:
  friend class Pool;

  template <class Args>
  Future(std::shared_ptr<detail::PoolCore> core, std::shared_ptr<detail::SubmitBatch<Args, R>> state)
      : core_(std::move(core)), state_(std::make_shared<Erased<Args>>(std::move(state))) {}

  struct ErasedBase {
    virtual ~ErasedBase() = default;
    [[nodiscard]] virtual bool finished() const = 0;
    virtual R take() = 0;
  };
  template <class Args>
  struct Erased final : ErasedBase {
    explicit Erased(std::shared_ptr<detail::SubmitBatch<Args, R>> b) : batch(std::move(b)) {}
    [[nodiscard]] bool finished() const override { return batch->settled(); }
    R take() override { return batch->take(); }
    std::shared_ptr<detail::SubmitBatch<Args, R>> batch;
  };

  void check_valid() const {
    if (!state_) throw Error("procpool::Future: no task (default-constructed, moved from, or get() already called)");
  }

  std::shared_ptr<detail::PoolCore> core_;
  std::shared_ptr<ErasedBase> state_;
};

/// A lazy sequence of results from Pool::imap / imap_unordered: iterating drives the pool. Items
/// are dispatched as results are consumed, so memory stays bounded however long the input is.
/// Dereferencing yields the item's value, or throws its failure; `outcomes()` style access is
/// through next_outcome(). Destroying it early abandons the items not yet dispatched.
///
/// It keeps the pool's internals alive, not the pool: if the Pool is shut down or destroyed
/// before the iteration is over, the outcomes of the items already dispatched are still yielded,
/// and then iteration throws procpool::Error saying that the rest of the input did not run.
template <class Out>
class ImapResults {
 public:
  /// An input iterator over the results.
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Out;
    using difference_type = std::ptrdiff_t;
    using pointer = const Out*;
    using reference = const Out&;

    iterator() = default;
    const Out& operator*() const { return current().value(); }
    const Out* operator->() const { return &current().value(); }
    iterator& operator++() {
      owner_->advance();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.at_end(); }

   private:
    friend class ImapResults;
    explicit iterator(ImapResults* owner) : owner_(owner) {}
    const Outcome<Out>& current() const { return *owner_->current_; }
    [[nodiscard]] bool at_end() const { return !owner_->current_.has_value(); }
    ImapResults* owner_ = nullptr;
  };

  ImapResults(ImapResults&&) noexcept = default;
  ImapResults& operator=(ImapResults&&) noexcept = default;
  ImapResults(const ImapResults&) = delete;
  ImapResults& operator=(const ImapResults&) = delete;
  ~ImapResults() {
    if (core_ && batch_) core_->forget(batch_);
  }

  /// Starts iteration (fetches the first outcome).
  iterator begin() {
    if (!started_) {
      started_ = true;
      advance();
    }
    return iterator(this);
  }
  std::default_sentinel_t end() const noexcept { return {}; }

  /// The next outcome, or nullopt at the end: the non-throwing way to consume results. Use
  /// either this or the iterators on one ImapResults, not both.
  std::optional<Outcome<Out>> next_outcome() {
    started_ = true;
    return next_();
  }

 private:
  friend class Pool;
  using Next = std::function<std::optional<Outcome<Out>>()>;

  ImapResults(std::shared_ptr<detail::PoolCore> core, std::shared_ptr<detail::Batch> batch,
              std::shared_ptr<void> keep_alive, Next next)
      : core_(std::move(core)), batch_(std::move(batch)), keep_alive_(std::move(keep_alive)), next_(std::move(next)) {}

  void advance() { current_ = next_(); }

  std::shared_ptr<detail::PoolCore> core_;
  std::shared_ptr<detail::Batch> batch_;
  std::shared_ptr<void> keep_alive_;  // an input range imap owns (an rvalue argument)
  Next next_;
  std::optional<Outcome<Out>> current_;
  bool started_ = false;
};

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
  explicit Pool(PoolOptions options) {
    detail::CoreSettings s;
    const std::vector<int> cpus = detail::allowed_cpus();
    s.workers = options.workers > 0 ? options.workers : std::max<std::size_t>(1, cpus.size());
    if (options.pin_cpus) s.cpus = cpus;
    s.chunk_size = options.chunk_size;
    s.max_tasks_per_worker = options.max_tasks_per_worker;
    s.task_timeout = options.task_timeout;
    s.initializer = std::move(options.initializer);
    settings_ = s;
    core_ = std::make_shared<detail::PoolCore>(std::move(s));
  }

  Pool(Pool&&) noexcept = default;
  Pool& operator=(Pool&& other) noexcept {
    if (this != &other) {
      shutdown_quietly();
      core_ = std::move(other.core_);
      settings_ = std::move(other.settings_);
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
    std::shared_ptr<detail::RangeBatch<decltype(begin(inputs)), decltype(end(inputs)), In, Out>> batch;
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
    batch->job_id = where.job;
    where.core->add_batch(batch);
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
    detail::CoreSettings settings = settings_;
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
      core->forget(batch);
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
    return core.register_job(&detail::Runner<Fn, In, Style>::make, bytes);
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
    auto batch = std::make_shared<detail::RangeBatch<It, Sent, In, Out>>(
        begin(inputs), end(inputs), size, std::move(options), false, true, size_hint(), std::move(storage)...);
    Placement where = place<In, detail::CallStyle::invoke>(f, size);
    batch->job_id = where.job;
    where.core->add_batch(batch);
    const CallEnd end_of_call{where.core, batch, where.core != core_};
    where.core->wait_until([&] { return batch->settled(); });
    if (batch->caller_error) std::rethrow_exception(batch->caller_error);
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
    auto batch = std::make_shared<detail::RangeBatch<It, Sent, In, Out>>(begin(*range), end(*range), size,
                                                                           std::move(options), true, ordered, size_hint());
    Placement where = place<In, detail::CallStyle::invoke>(f, size);
    batch->job_id = where.job;
    where.core->add_batch(batch);
    if (where.core != core_) core().adopt(where.core);
    std::shared_ptr<detail::PoolCore> core = where.core;
    auto next = [core, batch]() -> std::optional<Outcome<Out>> {
      core->wait_until([&] { return batch->has_next() || batch->exhausted() || batch->caller_error; });
      std::unique_lock lock(core->mutex());
      if (batch->has_next()) return batch->take_next();
      batch->throw_if_ended_early();
      return std::nullopt;
    };
    return ImapResults<Out>(std::move(core), batch, std::move(owned), std::move(next));
  }

  [[nodiscard]] std::size_t size_hint() const { return core().size(); }

  detail::CoreSettings settings_;  // for fresh workers
  std::shared_ptr<detail::PoolCore> core_;
};

}  // namespace procpool
