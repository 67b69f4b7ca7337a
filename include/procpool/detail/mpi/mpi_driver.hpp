// procpool::detail::mpi: rank 0's side. MpiTransport is the scheduler's Transport to the serving
// ranks: each rank offers one worker slot per worker of its local pool, so the transport-free
// Scheduler sizes chunks, pipelines two per slot, and balances across ranks as it does across local
// workers. MpiDriver owns that scheduler and drives it, with one mutex, from whichever caller waits.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include "../../error.hpp"
#include "../batch.hpp"
#include "../callback_runner.hpp"
#include "../driver.hpp"
#include "../function_ref.hpp"
#include "../local_transport.hpp"
#include "../scheduler.hpp"
#include "../settings.hpp"
#include "comm.hpp"
#include "modules.hpp"
#include "raw_batch.hpp"
#include "server.hpp"
#include "travel.hpp"

namespace procpool::detail::mpi {

/// A serving rank as rank 0 knows it.
struct RankInfo {
  int rank = 0;
  std::string host;
  std::size_t workers = 0;
  std::size_t first_slot = 0;  // its slots are [first_slot, first_slot + workers)
};

/// The Transport to the serving ranks (see the file comment).
class MpiTransport final : public Transport {
 public:
  MpiTransport(Outbox outbox, Inbox inbox, std::vector<RankInfo> ranks)
      : outbox_(std::move(outbox)), inbox_(std::move(inbox)), ranks_(std::move(ranks)) {
    for (std::size_t r = 0; r < ranks_.size(); ++r)
      for (std::size_t k = 0; k < ranks_[r].workers; ++k) slot_rank_.push_back(r);
    slots_.resize(slot_rank_.size());
    jobs_sent_.resize(ranks_.size());
  }

  [[nodiscard]] std::size_t slots() const noexcept { return slot_rank_.size(); }
  [[nodiscard]] const std::vector<RankInfo>& ranks() const noexcept { return ranks_; }

  /// The shape function of jobs registered with this runner factory (see travel.hpp).
  void note_shape(std::uintptr_t runner_factory, ShapeFn shape) { shapes_[runner_factory] = shape; }

  void lend_storage(std::size_t /*w*/, Chunk& /*c*/) override {}

  void send(std::size_t w, std::uint64_t id, Chunk& c, const Job& job, bool /*idle*/) override {
    const std::size_t r = slot_rank_[w];
    const int dest = ranks_[r].rank;
    // Jobs are named by their key (factory and bytes): the scheduler's own ids are not shown.
    auto [known, fresh] = job_ids_.try_emplace(job.key, next_job_id_);
    if (fresh) ++next_job_id_;
    const std::uint64_t job_id = known->second;
    if (jobs_sent_[r].insert(job_id).second) {
      AddressMap& map = AddressMap::instance();
      const auto shape = shapes_.find(job.runner_factory);
      if (shape == shapes_.end()) throw Error("procpool::mpi: a job without its shape function (a procpool bug)");
      const RelativeAddress factory = map.relative(job.runner_factory);
      const RelativeAddress shape_at = map.relative(reinterpret_cast<std::uintptr_t>(shape->second));
      Buffer body;
      Writer wr(body);
      wr.put<std::uint64_t>(job_id).str(factory.module).put<std::uint64_t>(factory.offset);
      wr.str(shape_at.module).put<std::uint64_t>(shape_at.offset);
      wr.bytes(job.callable.data(), job.callable.size());
      outbox_.send(dest, Kind::job, std::move(body));
    }
    Buffer body;
    Writer wr(body);
    wr.put<std::uint64_t>(id).put<std::uint64_t>(job_id).put<std::uint32_t>(static_cast<std::uint32_t>(w));
    wr.put<std::uint32_t>(c.count).put<std::uint32_t>(static_cast<std::uint32_t>(c.skip.size()));
    wr.put<std::uint32_t>(static_cast<std::uint32_t>(c.segments.size()));
    for (const std::uint32_t s : c.skip) wr.put<std::uint32_t>(s);
    for (const Segment& seg : c.segments) {
      wr.put<std::uint64_t>(seg.first).put<std::uint32_t>(seg.count);
      wr.str(seg.count == 1 ? seg.batch->describe(seg.first) : std::string());
    }
    // The items go out from the chunk's own buffer, not copied into the message: release() hands
    // that buffer to the send if MPI may still be reading it.
    wr.put<std::uint64_t>(c.items.size());
    Buffer items = Buffer::over(c.items.data(), c.items.size());
    items.resize(c.items.size());
    slots_[w].sent[id] = outbox_.send(dest, Kind::chunk, std::move(body), std::move(items));
  }

  void release(std::size_t w, std::uint64_t id, Chunk& c) override {
    const auto it = slots_[w].sent.find(id);
    if (it == slots_[w].sent.end()) return;
    outbox_.keep(it->second, c.items);
    slots_[w].sent.erase(it);
  }

  // A slot is a share of a rank's local pool, not a process: retiring, killing or replacing it
  // only changes what rank 0 expects from it (results of chunks it no longer holds are dropped).
  void retire(std::size_t w) override { reports_.push_back({w, Report::lost, 0}); }
  void kill(std::size_t w) override { reports_.push_back({w, Report::lost, -9}); }
  void replace(std::size_t w) override { reports_.push_back({w, Report::started, 0}); }

  [[nodiscard]] RunningItem running(std::size_t /*w*/) const override { return {}; }
  [[nodiscard]] bool initialized(std::size_t /*w*/) const override { return true; }
  /// A failure relayed by a rank: a worker's death or timeout there becomes a ProcessError or a
  /// TimeoutError here (its message already names rank, host, worker and item); an exception stays
  /// a RemoteError with its type.
  [[nodiscard]] std::exception_ptr item_error(std::size_t w, const RemoteException& e, const std::string& item,
                                              std::size_t index) const override {
    if (e.type_name == kProcessErrorType)
      return std::make_exception_ptr(
          ProcessError(fmt::format("procpool::mpi::Pool: {}", e.what), exitcode_in(e.what), index));
    if (e.type_name == kTimeoutErrorType)
      return std::make_exception_ptr(TimeoutError(fmt::format("procpool::mpi::Pool: {}", e.what), index));
    return std::make_exception_ptr(
        make_remote_error(e, fmt::format("procpool::mpi::Pool: {} in {}", item, describe(w)), index));
  }

  [[nodiscard]] std::string describe(std::size_t w) const override {
    const RankInfo& r = ranks_[slot_rank_[w]];
    return fmt::format("rank {} (host {})", r.rank, r.host);
  }

  /// Hands over to the scheduler what happened: slots started or lost, results in the order each
  /// slot was sent its chunks. True if anything did.
  bool progress(Scheduler& s) {
    bool news = outbox_.progress();
    while (!reports_.empty()) {
      const Report rep = reports_.front();
      reports_.pop_front();
      news = true;
      if (rep.what == Report::started) {
        slots_[rep.slot].waiting.clear();
        s.started(rep.slot);
      } else {
        // The scheduler releases each chunk the slot held (release() then looks after buffers
        // that sends may still be reading); later results for them are dropped.
        slots_[rep.slot].waiting.clear();
        s.lost(rep.slot, rep.exitcode, {});
        slots_[rep.slot].sent.clear();
      }
    }
    while (std::optional<Message> m = inbox_.poll()) {
      news = true;
      if (m->kind == Kind::stop) {
        ++stopped_;
        continue;
      }
      if (m->kind != Kind::results)
        throw Error(fmt::format("procpool::mpi: rank {} sent a message of unexpected kind {}", m->source,
                                static_cast<int>(m->kind)));
      Reader r(m->body.view());
      const auto chunk = r.get<std::uint64_t>();
      const auto slot = r.get<std::uint32_t>();
      if (slot >= slots_.size() || slots_[slot].sent.count(chunk) == 0) continue;  // no longer wanted
      const std::size_t head = sizeof(std::uint64_t) + sizeof(std::uint32_t);
      slots_[slot].waiting.emplace(chunk, std::move(m->body));
      deliver(s, slot, head);
    }
    return news;
  }

  /// Tells every serving rank to stop, and waits until each said it will send nothing more.
  void stop_ranks() {
    for (const RankInfo& r : ranks_) outbox_.send(r.rank, Kind::stop, Buffer{});
    Backoff backoff;
    while (stopped_ < ranks_.size()) {
      bool news = outbox_.progress();
      while (std::optional<Message> m = inbox_.poll()) {
        news = true;
        if (m->kind == Kind::stop) ++stopped_;
      }
      if (news)
        backoff.news();
      else
        backoff.idle();
    }
    outbox_.drain();
  }

  /// Waits until MPI is done with every send (and so with the chunks' buffers they read).
  void drain_sends() noexcept { outbox_.drain(); }

  [[nodiscard]] std::uint64_t bytes_sent() const noexcept { return outbox_.bytes_sent(); }

 private:
  struct Report {
    std::size_t slot;
    enum { started, lost } what;
    int exitcode;
  };
  struct Slot {
    std::map<std::uint64_t, std::uint64_t> sent;  // chunks out, not yet released: their sends' tickets
    std::map<std::uint64_t, Buffer> waiting;      // results that came before an earlier chunk's
  };

  /// The exit code (Python's convention) in a message of messages.hpp's describe_ending: "was
  /// killed by signal 11 (SIGSEGV)" is -11, "exited with code 3" is 3; -256 if it says neither.
  static int exitcode_in(const std::string& what) {
    const auto number_after = [&](std::string_view words) -> std::optional<int> {
      const std::size_t at = what.find(words);
      if (at == std::string::npos) return std::nullopt;
      return std::atoi(what.c_str() + at + words.size());
    };
    if (const auto sig = number_after("killed by signal ")) return -*sig;
    if (const auto code = number_after("exited with code ")) return *code;
    return -256;
  }

  /// Gives the scheduler the slot's results in the order the chunks were sent.
  void deliver(Scheduler& s, std::size_t w, std::size_t head) {
    Slot& slot = slots_[w];
    while (!slot.waiting.empty()) {
      const std::optional<std::uint64_t> front = s.oldest_in_flight(w);
      if (!front) return;
      const auto it = slot.waiting.find(*front);
      if (it == slot.waiting.end()) return;
      Buffer body = std::move(it->second);
      slot.waiting.erase(it);
      s.results(w, *front, body.view().subspan(head), {});
      BufferStash::instance().give(std::move(body));
    }
  }

  Outbox outbox_;
  Inbox inbox_;
  std::vector<RankInfo> ranks_;
  std::vector<std::size_t> slot_rank_;
  std::vector<Slot> slots_;
  std::vector<std::set<std::uint64_t>> jobs_sent_;  // per rank
  std::unordered_map<std::string, std::uint64_t> job_ids_;
  std::uint64_t next_job_id_ = 1;
  std::unordered_map<std::uintptr_t, ShapeFn> shapes_;
  std::deque<Report> reports_;
  std::size_t stopped_ = 0;
};

/// Rank 0's driver: the scheduler over MpiTransport, one mutex; whichever caller waits drives it,
/// and a progress thread does while calls with done callbacks wait and no caller drives. Every MPI
/// call happens with the mutex held (MPI_THREAD_SERIALIZED).
class MpiDriver final : public Driver {
 public:
  /// `threads`: whether MPI may be called from any thread, one at a time (MPI_THREAD_SERIALIZED);
  /// without it, only the thread that called run may drive (no done callbacks, no other threads).
  MpiDriver(Outbox outbox, Inbox inbox, std::vector<RankInfo> ranks, Settings settings, bool threads)
      : settings_(std::move(settings)),
        threads_(threads),
        main_thread_(std::this_thread::get_id()),
        user_chunk_size_(settings_.chunk_size),
        transport_(std::move(outbox), std::move(inbox), std::move(ranks)),
        scheduler_(settings_, transport_, clock_),
        callbacks_(CallbackRunner::Hooks{
            .may_drive = [this] { return !driving_ && !scheduler_.lifecycle().stopped(); },
            .round =
                [this](std::unique_lock<std::mutex>& lock) {
                  if (round(lock))
                    progress_backoff_.news();
                  else
                    idle(lock, progress_backoff_);
                },
            .after_callbacks = {},
            // A caller that stops driving notifies, but one that waits polls MPI in its own rounds:
            // look again soon.
            .recheck = std::chrono::milliseconds{1},
        }),
        mu_(callbacks_.mutex()),
        cv_(callbacks_.cv()) {
    for (std::size_t w = 0; w < scheduler_.size(); ++w) scheduler_.request_worker(w);
    transport_.progress(scheduler_);
    scheduler_.lifecycle().started();
  }
  MpiDriver(const MpiDriver&) = delete;
  MpiDriver& operator=(const MpiDriver&) = delete;
  ~MpiDriver() override {
    try {
      shutdown();
    } catch (...) {
      // Nothing more can be done: MPI itself is failing.
    }
    // Sends may still read chunks' buffers, which the scheduler frees before the transport goes.
    transport_.drain_sends();
  }

  [[nodiscard]] std::size_t size() const noexcept { return scheduler_.size(); }
  [[nodiscard]] const std::vector<RankInfo>& ranks() const noexcept { return transport_.ranks(); }

  /// Registers a callable, with the shape function of its item and result types.
  std::uint64_t register_job(std::uintptr_t runner_factory, ShapeFn shape, std::span<const std::byte> callable) {
    std::lock_guard lock(mu_);
    transport_.note_shape(runner_factory, shape);
    return scheduler_.register_job(runner_factory, callable);
  }

  /// Queues a batch and sends its first chunks.
  void add_batch(const std::shared_ptr<Batch>& batch, std::uint64_t job) {
    std::lock_guard lock(mu_);
    scheduler_.lifecycle().throw_if_unusable();
    scheduler_.add(batch, job);
    queued_.push_back({batch, job});
    if (!driving_) {
      size_chunks();
      scheduler_.dispatch();
      transport_.progress(scheduler_);
    }
  }

  /// Drives until `done()` holds (checked with the mutex held), or the deadline passes.
  void wait(FunctionRef<bool()> done, std::optional<TimePoint> deadline) override {
    std::unique_lock lock(mu_);
    Backoff backoff;
    while (!done()) {
      if (deadline && std::chrono::steady_clock::now() >= *deadline) return;
      if (scheduler_.lifecycle().stopped())
        throw Error("procpool::mpi::Pool: the pool was shut down while this call waited on it");
      if (driving_) {
        cv_.wait_for(lock, std::chrono::microseconds{200});
        continue;
      }
      if (round(lock))
        backoff.news();
      else
        idle(lock, backoff);
      callbacks_.run_settled_callbacks(lock);
    }
  }
  using Driver::wait_until;

  /// One round that does not wait.
  void make_progress() override {
    std::unique_lock lock(mu_);
    if (driving_ || scheduler_.lifecycle().stopped()) return;
    round(lock);
    callbacks_.run_settled_callbacks(lock);
  }

  /// The caller stopped waiting for `batch`.
  void forget(Batch& batch) noexcept override {
    std::lock_guard lock(mu_);
    scheduler_.forget(batch);
  }

  /// Stops a call (Future::cancel): its items without an outcome fail with CancelledError. Items
  /// already sent to a rank are not withdrawn there: they run, and their results are dropped.
  bool cancel(Batch& batch) override {
    std::unique_lock lock(mu_);
    const bool stopped = scheduler_.abort(batch, Abort::cancelled);
    cv_.notify_all();
    callbacks_.run_settled_callbacks(lock);
    return stopped;
  }

  /// Runs `batch`'s done callbacks once it settles, driving the pool from a progress thread while
  /// no caller does.
  void watch(std::shared_ptr<Batch> batch) override {
    if (!threads_)
      throw Error("procpool::mpi::Pool: done callbacks need a thread that drives MPI, and this MPI library does not "
                  "provide MPI_THREAD_SERIALIZED");
    std::unique_lock lock(mu_);
    callbacks_.watch(std::move(batch), lock, scheduler_.lifecycle().stopped());
  }

  [[nodiscard]] std::mutex& mutex() const override { return mu_; }

  /// Finishes what runs, then stops the serving ranks (they answer, then leave).
  void shutdown() {
    std::unique_lock lock(mu_);
    callbacks_.stop(lock);
    if (scheduler_.lifecycle().stopped()) return;
    scheduler_.lifecycle().close();
    scheduler_.cut_streams("the MPI pool was shut down (procpool::mpi::run's function returned)");
    scheduler_.terminate("the MPI pool was shut down (procpool::mpi::run's function returned)");
    transport_.progress(scheduler_);
    scheduler_.lifecycle().stop();
    transport_.stop_ranks();
    scheduler_.lifecycle().finish();
    callbacks_.run_settled_callbacks(lock);
    cv_.notify_all();
  }

 private:
  /// Dispatch, hand over what arrived, dispatch again. True if anything happened.
  bool round(std::unique_lock<std::mutex>& /*lock*/) {
    if (!threads_ && std::this_thread::get_id() != main_thread_)
      throw Error("procpool::mpi::Pool: only the thread that called procpool::mpi::run may use the pool: this MPI "
                  "library does not provide MPI_THREAD_SERIALIZED");
    driving_ = true;
    bool news = false;
    try {
      size_chunks();
      scheduler_.dispatch();
      news = transport_.progress(scheduler_);
      scheduler_.tick();
      size_chunks();
      scheduler_.dispatch();
    } catch (...) {
      driving_ = false;
      cv_.notify_all();
      throw;
    }
    driving_ = false;
    cv_.notify_all();
    return news;
  }

  /// Sizes the next chunks for ranks (unless Options::chunk_size fixed them): the scheduler's
  /// automatic sizing aims at a millisecond of work per chunk and shrinks chunks towards one item
  /// at the end of a call, right for local workers a few microseconds away; a rank's round trip
  /// costs far more. From the measured cost of the oldest call's job, chunks hold about
  /// kRankChunkNs of one worker's work (more with thousands of slots), and at the end of a call
  /// never less than kMinRankChunkNs (the scheduler reads this through its Settings).
  void size_chunks() {
    if (user_chunk_size_ > 0) return;
    while (!queued_.empty() && (queued_.front().batch.expired() || queued_.front().batch.lock()->source_done()))
      queued_.pop_front();
    settings_.chunk_size = 0;  // automatic: a few items first, until the job's cost is measured
    if (queued_.empty()) return;
    const std::shared_ptr<Batch> b = queued_.front().batch.lock();
    const Job* job = scheduler_.jobs().find(queued_.front().job);
    if (job == nullptr || job->ns_per_item <= 0) return;
    const double ns = job->ns_per_item * static_cast<double>(RawBatch::kChunkScale);
    const auto items = [&](double budget_ns) { return static_cast<std::size_t>(std::clamp(budget_ns / ns, 1.0, 1e6)); };
    // With many slots, chunks grow so that the driver's own cost per chunk (kDriverNsPerChunk,
    // measured: docs/scaling.md) stays under half of its time: every slot asks for a chunk about
    // once per chunk's work.
    const double budget = std::max(kRankChunkNs, 2.0 * kDriverNsPerChunk * static_cast<double>(scheduler_.size()));
    std::size_t n = items(budget);
    if (b->total_known()) {
      const std::size_t balance = (b->total() - b->dispatched()) / (2 * scheduler_.size());
      n = std::min(n, std::max(balance, items(kMinRankChunkNs)));
    }
    settings_.chunk_size = std::max<std::size_t>(1, n);
  }

  /// Waits a little for news, the mutex released (other threads may add work meanwhile).
  void idle(std::unique_lock<std::mutex>& lock, Backoff& backoff) {
    driving_ = true;
    lock.unlock();
    backoff.idle();
    lock.lock();
    driving_ = false;
    cv_.notify_all();
  }

  static constexpr double kRankChunkNs = 16e6;
  static constexpr double kMinRankChunkNs = 2e6;
  static constexpr double kDriverNsPerChunk = 25e3;

  struct Queued {
    std::weak_ptr<Batch> batch;
    std::uint64_t job;
  };

  Settings settings_;  // the scheduler holds it by reference; size_chunks() sets its chunk_size
  const bool threads_;
  const std::thread::id main_thread_;
  const std::size_t user_chunk_size_;
  std::deque<Queued> queued_;  // calls with items left to dispatch, oldest first
  MonotonicClock clock_;
  MpiTransport transport_;
  Scheduler scheduler_;
  Backoff progress_backoff_;  // the progress thread's, across its rounds
  // Done callbacks and the progress thread; it owns the mutex and the condition variable. Unlike a
  // local pool, the last handle on this driver is never dropped by a done callback: run holds its
  // own until shutdown() has joined the progress thread (see callback_runner.hpp for the other case).
  CallbackRunner callbacks_;
  std::mutex& mu_;
  std::condition_variable& cv_;
  bool driving_ = false;
};

}  // namespace procpool::detail::mpi
