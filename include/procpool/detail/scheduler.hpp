// procpool::detail: the scheduler: which worker runs what, and what happens when one fails.
//
// It knows no process, socket or clock of its own. It sees numbered workers through a Transport
// (which carries chunks to them and reports what they send back and when they die) and time
// through a Clock, so that tests can drive it with fakes of both (tests/test_scheduler.cpp). The
// pool's driver (pool_core.hpp) owns it and calls it with the pool's mutex held.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include "../error.hpp"
#include "batch.hpp"
#include "chunk.hpp"
#include "job_table.hpp"
#include "lifecycle.hpp"
#include "remote_exception.hpp"
#include "settings.hpp"

namespace procpool::detail {

/// Where a worker stands in its work, as its transport sees it.
struct RunningItem {
  std::uint64_t chunk = 0;      // the chunk it runs; 0: none
  std::uint32_t item = 0;       // the local index in that chunk
  std::int64_t started_ns = 0;  // when that item started, on the scheduler's clock; 0: unknown
};

/// What the scheduler needs of the way to its workers. Worker slots are numbered 0..workers-1; a
/// slot's process may be replaced many times.
class Transport {
 public:
  virtual ~Transport() = default;
  /// May lend memory to encode a new chunk for worker w into (sets c.items and c.lane).
  virtual void lend_storage(std::size_t w, Chunk& c) = 0;
  /// Sends chunk `id` to w, with its job first if w does not hold that job yet. `idle`: w has
  /// nothing else in flight.
  virtual void send(std::size_t w, std::uint64_t id, Chunk& c, const Job& job, bool idle) = 0;
  /// Chunk `id` is no longer w's (answered, or to run again): memory lent for it comes back.
  virtual void release(std::size_t w, std::uint64_t id, Chunk& c) = 0;
  /// Asks w to exit once it has answered what it holds (it is then reported lost).
  virtual void retire(std::size_t w) = 0;
  /// Kills w (it is then reported lost).
  virtual void kill(std::size_t w) = 0;
  /// Asks w not to start item `from` of chunk `id`, nor any after it in that chunk: it then answers
  /// the chunk with what it ran before (see ResultsHeader::answered). Returns what w runs, read
  /// after the request was posted: if that is an item at or after `from`, w had started it. A
  /// transport that cannot withdraw items leaves them to run (their outcomes are then dropped).
  virtual RunningItem withdraw(std::size_t w, std::uint64_t /*id*/, std::uint32_t /*from*/) { return running(w); }
  /// Asks for a new worker in slot w (reported started, or spawn_failed).
  virtual void replace(std::size_t w) = 0;
  /// What w runs now.
  [[nodiscard]] virtual RunningItem running(std::size_t w) const = 0;
  /// Whether w's initializer has returned.
  [[nodiscard]] virtual bool initialized(std::size_t w) const = 0;
  /// How messages name w ("worker 1 (pid 4242)").
  [[nodiscard]] virtual std::string describe(std::size_t w) const = 0;
  /// Called as a dispatch begins (a transport may note what on_callers_cpu needs once for all).
  virtual void dispatch_begins() {}
  /// Whether w runs on the caller's CPU: such workers are served last, so that a lone task runs
  /// beside the caller, not in its way.
  [[nodiscard]] virtual bool on_callers_cpu(std::size_t /*w*/) const { return false; }
  /// The error item `index` of a call (named `item`: "item 41") fails with when w reports that it
  /// failed with `e` (a failure record of its results): a RemoteError, by default. A transport whose
  /// workers relay failures from further away (MPI ranks) may re-create other errors there.
  [[nodiscard]] virtual std::exception_ptr item_error(std::size_t w, const RemoteException& e, const std::string& item,
                                                      std::size_t index) const {
    return std::make_exception_ptr(
        make_remote_error(e, fmt::format("procpool::Pool: {} in {}", item, describe(w)), index));
  }
};

/// The scheduler's time, in nanoseconds on one monotonic clock (the transport's RunningItem
/// uses the same one).
class Clock {
 public:
  virtual ~Clock() = default;
  [[nodiscard]] virtual std::int64_t now_ns() const = 0;
};

/// The scheduler whose progress callback runs on this thread, if any: a callback that calls into
/// its own pool would deadlock on the pool's mutex, which the thread already holds.
[[nodiscard]] inline const void*& callback_running_for() noexcept {
  static thread_local const void* scheduler = nullptr;
  return scheduler;
}

class Scheduler {
 public:
  /// A chunk expected to take less than this may have a second one queued behind it.
  static constexpr double kPrefetchNs = 2e6;
  /// Automatic chunks hold about this much work.
  static constexpr double kTargetChunkNs = 1e6;
  /// A chunk never grows beyond this many bytes of items (unless one item is larger).
  static constexpr std::size_t kMaxChunkBytes = std::size_t{8} << 20;
  /// A worker that could not be started is asked for again after this long.
  static constexpr std::int64_t kRespawnDelayNs = 100'000'000;

  Scheduler(const Settings& settings, Transport& transport, const Clock& clock)
      : settings_(settings), transport_(transport), clock_(clock), workers_(settings.workers) {}
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  [[nodiscard]] Lifecycle& lifecycle() noexcept { return lifecycle_; }
  [[nodiscard]] const Lifecycle& lifecycle() const noexcept { return lifecycle_; }
  [[nodiscard]] JobTable& jobs() noexcept { return jobs_; }
  [[nodiscard]] std::size_t size() const noexcept { return workers_.size(); }
  /// Why the last worker could not be started, if one could not.
  [[nodiscard]] const std::string& spawn_error() const noexcept { return spawn_error_; }

  // ---- calls ---------------------------------------------------------------------------------

  /// Registers a callable; identical callables share an id.
  std::uint64_t register_job(std::uintptr_t runner_factory, std::span<const std::byte> callable) {
    return jobs_.intern(runner_factory, callable);
  }

  /// Queues a batch of job `job` (registered for it); its chunks go out on the next dispatch().
  void add(const std::shared_ptr<Batch>& batch, std::uint64_t job) {
    batch->job_id_ = job;
    if (batch->total_known_) jobs_.at(job).undispatched += batch->total_ - batch->dispatched_;
    if (batch->finished()) {
      jobs_.release(job);  // an empty input
      return;
    }
    if (batch->timeout_.count() > 0) {
      batch->deadline_ns_ = clock_.now_ns() + batch->timeout_.count();
      deadlines_.push_back(batch);
    }
    batches_.push_back(batch);
  }

  /// Stops a call before all its items ran (Future::cancel, a call's deadline): every item without
  /// an outcome fails (CancelledError, TimeoutError); items not started never start; running ones
  /// are killed with their workers, which are replaced, and the other items those workers held run
  /// elsewhere. False if the call had settled already.
  bool abort(Batch& b, Abort why);

  /// The caller stopped waiting for a batch: the rest of its input is never read, its callback
  /// never called again; chunks already out finish and are discarded.
  void forget(Batch& b) {
    b.forgotten_ = true;
    stop_dispatch(b);
  }

  /// Cuts every stream where it is: nobody will consume it any more. Its iteration ends, after the
  /// outcomes of what was dispatched, with an error saying why.
  void cut_streams(const std::string& why) {
    for (const auto& b : batches_)
      if (b->streaming() && !b->source_done_) cut_stream(*b, why);
  }

  /// Kills every worker and fails whatever has not finished (terminate()).
  void terminate(const std::string& why) {
    lifecycle_.terminate();
    for (std::size_t w = 0; w < workers_.size(); ++w) kill(w);
    fail_pending(why);
  }

  /// Nothing queued, nothing in flight.
  [[nodiscard]] bool idle() const {
    return chunks_.empty() &&
           std::all_of(batches_.begin(), batches_.end(), [](const auto& b) { return b->source_done_; });
  }

  // ---- driving -------------------------------------------------------------------------------

  /// Gives work to the workers that may take it: every idle worker gets a chunk before any worker
  /// gets a second one, so an idle worker never waits while another holds a chunk it has not
  /// started; workers on other CPUs than the caller's first.
  void dispatch() {
    if (!lifecycle_.dispatches()) return;
    transport_.dispatch_begins();
    // One reading of the clock for the whole dispatch: chunks sent now are stamped with it.
    now_ = clock_.now_ns();
    for (const std::size_t held : {std::size_t{0}, std::size_t{1}}) {
      for (const bool callers_cpu : {false, true}) {
        for (std::size_t w = 0; w < workers_.size(); ++w) {
          if (transport_.on_callers_cpu(w) != callers_cpu) continue;
          if (workers_[w].in_flight.size() != held || !accepting(w)) continue;
          const std::optional<std::uint64_t> chunk = next_chunk_for(w);
          if (!chunk && workers_[w].retiring) continue;  // nothing it may take; others may
          if (!chunk) break;
          send(w, *chunk);
        }
      }
    }
    // Batches with nothing left to dispatch leave the queue (chunks keep them alive until done).
    while (!batches_.empty() && batches_.front()->source_done_) batches_.pop_front();
  }

  /// Enforces the task timeouts and the calls' deadlines, and asks again for workers that could not
  /// be started.
  void tick() {
    const std::int64_t now = clock_.now_ns();
    for (std::size_t w = 0; w < workers_.size(); ++w) {
      WorkerRecord& r = workers_[w];
      if (r.state != WorkerState::running) continue;
      // The timeout covers the initializer too: a worker that never finishes it never runs a task.
      // (Without one, a worker's start-up is not timed: under load it may take longer than a
      // short timeout, and the pool must not break for that.)
      if (settings_.timed() && settings_.initializer && !r.init_timed_out && !transport_.initialized(w) &&
          now - r.started_ns >= settings_.task_timeout.count()) {
        r.init_timed_out = true;
        transport_.kill(w);
        continue;
      }
      if (r.in_flight.empty() || r.timed_out || r.stopped_for_abort) continue;
      const RunningItem at = transport_.running(w);
      if (at.chunk == 0 || at.started_ns == 0) continue;
      const std::int64_t limit = item_limit_ns(at);
      if (limit == 0 || now - at.started_ns < limit) continue;
      r.timed_out = at;
      r.timed_out_limit = std::chrono::nanoseconds{limit};
      transport_.kill(w);
    }
    if (!deadlines_.empty()) {
      // abort() may settle calls and drop them from the list: walk a copy.
      const std::vector<std::shared_ptr<Batch>> due = deadlines_;
      for (const auto& b : due)
        if (!b->settled() && now >= b->deadline_ns_) abort(*b, Abort::deadline);
      std::erase_if(deadlines_, [](const auto& b) { return b->settled(); });
    }
    if (!lifecycle_.replaces_workers()) return;
    for (std::size_t w = 0; w < workers_.size(); ++w)
      if (workers_[w].state == WorkerState::vacant && now >= workers_[w].next_attempt_ns) request_worker(w);
  }

  /// How long until tick() has something to do, if ever.
  [[nodiscard]] std::optional<std::chrono::nanoseconds> next_timer() const {
    const std::int64_t now = clock_.now_ns();
    std::optional<std::int64_t> next;
    const auto consider = [&](std::int64_t at) { next = std::min(next.value_or(at), at); };
    for (std::size_t w = 0; w < workers_.size(); ++w) {
      const WorkerRecord& r = workers_[w];
      if (r.state == WorkerState::vacant && lifecycle_.replaces_workers()) consider(r.next_attempt_ns);
      if (r.state != WorkerState::running) continue;
      if (settings_.timed() && settings_.initializer && !r.init_timed_out && !transport_.initialized(w))
        consider(r.started_ns + settings_.task_timeout.count());
      // A worker already killed for its timeout has nothing more to time: its loss is reported.
      if (r.in_flight.empty() || r.timed_out || r.stopped_for_abort) continue;
      const RunningItem at = transport_.running(w);
      if (at.chunk != 0 && at.started_ns != 0) {
        if (const std::int64_t limit = item_limit_ns(at); limit > 0) consider(at.started_ns + limit);
      } else if (const auto c = chunks_.find(r.in_flight.front()); c != chunks_.end()) {
        // Not started yet (or its start not seen yet): look again within its limit.
        if (const std::int64_t limit = chunk_limit_ns(c->second); limit > 0) consider(now + limit);
      }
    }
    for (const auto& b : deadlines_)
      if (!b->settled()) consider(b->deadline_ns_);
    if (!next) return std::nullopt;
    return std::chrono::nanoseconds{std::max<std::int64_t>(0, *next - now)};
  }

  /// Whether w owes results that are probably microseconds away (the driver then spins for them).
  [[nodiscard]] bool result_due_soon(std::size_t w) const {
    const WorkerRecord& r = workers_[w];
    return r.state == WorkerState::running && !r.in_flight.empty() &&
           expected_ns(r.in_flight.front()).value_or(0) < 200e3;
  }

  // ---- what the transport reports ------------------------------------------------------------

  /// A worker process now serves slot w.
  void started(std::size_t w) {
    WorkerRecord& r = workers_[w];
    const int init_deaths = r.init_deaths;
    r = WorkerRecord{};
    r.state = WorkerState::running;
    r.init_deaths = init_deaths;
    r.started_ns = clock_.now_ns();
    if (lifecycle_.stopping()) retire(w);
  }

  /// No worker could be started in slot w; asked for again later.
  void spawn_failed(std::size_t w, std::string why) {
    workers_[w].state = WorkerState::vacant;
    workers_[w].next_attempt_ns = clock_.now_ns() + kRespawnDelayNs;
    spawn_error_ = std::move(why);
    if (lifecycle_.phase() != Phase::starting) fail_all_if_no_workers();
  }

  /// w's initializer returned.
  void ready(std::size_t w) { workers_[w].ready = true; }

  /// w's initializer threw: the pool breaks with `message` once w is gone.
  void init_failed(std::size_t w, std::string message) { workers_[w].init_failure = std::move(message); }

  [[nodiscard]] bool has_in_flight(std::size_t w, std::uint64_t id) const {
    const auto& f = workers_[w].in_flight;
    return !f.empty() && f.front() == id;
  }
  /// The chunk w must answer next, if any.
  [[nodiscard]] std::optional<std::uint64_t> oldest_in_flight(std::size_t w) const {
    const auto& f = workers_[w].in_flight;
    if (f.empty()) return std::nullopt;
    return f.front();
  }
  [[nodiscard]] std::uint32_t chunk_size_of(std::uint64_t id) const { return chunks_.at(id).count; }

  /// w answered chunk `id` with a results frame's payload (`lane`: the chunk's results lane).
  /// Throws DecodeError if the worker's bytes are malformed (the transport then gives up on w).
  void results(std::size_t w, std::uint64_t id, std::span<const std::byte> payload, std::span<const std::byte> lane);

  /// Fails the items w holds with prefix + "item N" + suffix, and kills w.
  void give_up(std::size_t w, const std::string& prefix, const std::string& suffix);

  /// w's process is gone (its exit code in Python's convention), and everything it sent was read.
  /// `at_death`: what it was running then.
  void lost(std::size_t w, int exitcode, RunningItem at_death);

  /// The transport cannot start workers any more (the zygote died): the pool breaks.
  void transport_failed(const std::string& reason, const std::string& why_pending) {
    lifecycle_.break_with(reason);
    for (std::size_t w = 0; w < workers_.size(); ++w) kill(w);
    fail_pending(why_pending);
    for (auto& r : workers_) r.state = WorkerState::vacant;
  }

  /// Whether slot w has a live worker process.
  [[nodiscard]] bool running(std::size_t w) const { return workers_[w].state == WorkerState::running; }
  /// Whether slot w waits for a worker the transport was asked for.
  [[nodiscard]] bool starting(std::size_t w) const { return workers_[w].state == WorkerState::starting; }

  /// Asks for the first worker of slot w.
  void request_worker(std::size_t w) {
    workers_[w].state = WorkerState::starting;
    workers_[w].next_attempt_ns = clock_.now_ns() + kRespawnDelayNs;
    transport_.replace(w);
  }

 private:
  enum class WorkerState { vacant, starting, running, leaving };

  /// How messages name the pool.
  static constexpr std::string_view kWho = "procpool::Pool";

  struct WorkerRecord {
    WorkerState state = WorkerState::vacant;
    std::deque<std::uint64_t> in_flight;  // chunk ids, in the order sent
    std::size_t items_assigned = 0;       // since it started, for max_tasks_per_worker
    bool retiring = false;
    bool ready = false;
    std::optional<RunningItem> timed_out;         // killed for the task timeout while running this
    std::chrono::nanoseconds timed_out_limit{0};  // the limit it ran past
    bool stopped_for_abort = false;               // killed because it ran an item of a stopped call: nobody is to blame
    std::uint64_t withdrawn_chunk = 0;            // the chunk a withdrawal was posted for
    std::uint32_t withdrawn_from = 0;
    std::optional<std::string> init_failure;
    int init_deaths = 0;  // deaths in a row before the initializer finished
    std::int64_t started_ns = 0;
    bool init_timed_out = false;  // killed because its initializer outran the task timeout
    std::int64_t next_attempt_ns = 0;
  };

  // The pieces below live in scheduler_impl.hpp.
  [[nodiscard]] bool accepting(std::size_t w) const;
  [[nodiscard]] std::optional<double> expected_ns(std::uint64_t id) const;
  std::optional<std::uint64_t> next_chunk_for(std::size_t w);
  [[nodiscard]] std::size_t chunk_size_for(const Batch& b) const;
  void send(std::size_t w, std::uint64_t id);
  void retire(std::size_t w);
  void kill(std::size_t w);
  void completed(Batch& b, std::size_t n);
  void stop_dispatch(Batch& b);
  void fail_batch(Batch& b, std::exception_ptr error);
  void cut_stream(Batch& b, const std::string& why);
  void report_progress(Batch& b);
  void requeue_from(std::size_t w, std::uint64_t id);
  void finish_chunk(std::uint64_t id);
  void fail_chunk(std::uint64_t id, const std::string& prefix, const std::string& suffix = "");
  void fail_pending(const std::string& why);
  void fail_undispatched(const std::string& why);
  void fail_all_if_no_workers();
  void blame(std::size_t w, Chunk& c, const RunningItem& at, int exitcode);
  [[nodiscard]] std::int64_t batch_limit_ns(const Batch& b) const noexcept {
    return b.task_timeout_.count() > 0 ? b.task_timeout_.count() : settings_.task_timeout.count();
  }
  [[nodiscard]] Batch* batch_of(const Chunk& c, std::uint32_t local, std::size_t* index = nullptr) const;
  [[nodiscard]] std::int64_t item_limit_ns(const RunningItem& at) const;
  [[nodiscard]] std::int64_t chunk_limit_ns(const Chunk& c) const;
  [[nodiscard]] std::exception_ptr abort_error(const Batch& b, std::size_t index) const;
  void stop_in_flight(std::size_t w, std::uint64_t id, const std::vector<std::uint32_t>& stopped);
  void answered_part(std::size_t w, std::uint64_t id, std::uint32_t answered);

  const Settings& settings_;
  Transport& transport_;
  const Clock& clock_;
  Lifecycle lifecycle_;
  JobTable jobs_;
  std::vector<WorkerRecord> workers_;
  std::string spawn_error_;
  std::deque<std::shared_ptr<Batch>> batches_;
  std::unordered_map<std::uint64_t, Chunk> chunks_;
  std::deque<std::uint64_t> requeued_;             // chunks that ran on a dead worker go first
  std::vector<std::shared_ptr<Batch>> deadlines_;  // calls with a deadline, until they settle
  std::uint64_t next_chunk_id_ = 1;
  std::int64_t now_ = 0;  // the clock when the current dispatch began
  // Encoding buffers of finished chunks kept for the next ones, at most this many (or two per
  // worker, as many as a transport without lanes keeps in flight) and this much: large items are
  // then encoded into memory already mapped, not into fresh pages.
  static constexpr std::size_t kSpareItemBuffers = 4;
  static constexpr std::size_t kMaxSpareBytes = std::size_t{32} << 20;
  std::vector<Buffer> spare_item_buffers_;
};

}  // namespace procpool::detail

#include "scheduler_impl.hpp"
