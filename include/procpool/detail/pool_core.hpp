// procpool::detail: the pool's parent side: workers, chunk scheduling, results and failures.
//
// There is no background thread: whichever caller waits on the pool (map, Future::get, an imap
// iterator, join) drives it, one at a time, with the core's mutex released while it sleeps in
// poll(). Every descriptor is non-blocking and polled in both directions, so a full pipe never
// deadlocks the parent against a worker.
#pragma once

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../codec.hpp"
#include "../error.hpp"
#include "buffer.hpp"
#include "fd.hpp"
#include "fork.hpp"
#include "lanes.hpp"
#include "remote_exception.hpp"
#include "wire.hpp"
#include "worker.hpp"
#include "zygote.hpp"

namespace procpool::detail {

/// One call on the pool (a map, an imap, a submit), as the core sees it: a source of encoded items
/// and a sink for their outcomes. The typed halves live in pool.hpp.
class Batch {
 public:
  virtual ~Batch() = default;

  /// Encodes up to `max_items` more items into `out`, stopping early once `max_bytes` are
  /// written (but always at least one item); returns how many were encoded (0: source exhausted).
  virtual std::size_t encode_next(std::size_t max_items, std::size_t max_bytes, Buffer& out) = 0;
  /// Decodes the value of item `index` (throws DecodeError on malformed bytes).
  virtual void accept_value(std::size_t index, Decoder& in) = 0;
  /// Takes `count` values of items first.. as one contiguous block when the result type is
  /// bitwise; returns false when this batch does not take that path.
  virtual bool accept_bulk(std::size_t first, std::size_t count, std::span<const std::byte> bytes) = 0;
  /// Records that item `index` failed.
  virtual void accept_error(std::size_t index, std::exception_ptr error) = 0;
  /// How to name item `index` in a message ("item 41", "the submitted task").
  [[nodiscard]] virtual std::string describe(std::size_t index) const { return "item " + std::to_string(index); }
  /// Called after outcomes arrived (progress callbacks).
  virtual void on_progress() {}
  /// How many more items may be dispatched now (imap bounds its memory this way).
  [[nodiscard]] virtual std::size_t room() const { return SIZE_MAX; }
  /// Told of the encoded size of results as they arrive (imap bounds its memory by them too).
  virtual void note_results(std::size_t /*count*/, std::size_t /*bytes*/) {}
  /// True for a stream (imap): items are dispatched as they are consumed, so when the pool stops
  /// under it the rest of its input is cut off, never iterated (it may be endless).
  [[nodiscard]] virtual bool streaming() const { return false; }

  std::uint64_t job_id = 0;
  std::size_t total = 0;          // known once source_done (or from the start for sized inputs)
  bool total_known = false;
  std::size_t dispatched = 0;     // items encoded into chunks
  std::size_t completed = 0;      // items with an outcome
  std::size_t consumed = 0;       // items taken by the consumer (imap)
  std::size_t chunk_size = 0;     // 0: automatic
  bool source_done = false;

  /// An exception thrown by the caller's own code run for this call in the parent (iterating its
  /// input, encoding an argument, its progress callback): the call fails with it, and the pool
  /// dispatches nothing more of the batch.
  std::exception_ptr caller_error;
  /// The caller no longer waits for this batch (its call returned or gave up): the pool never runs
  /// its code again (input, callback), and discards whatever of it is still in flight.
  bool forgotten = false;
  /// Set when the pool stopped before a stream dispatched all its input: iteration ends with it.
  std::optional<std::string> cut_reason;

  [[nodiscard]] bool finished() const noexcept { return source_done && completed == dispatched; }
  /// Nothing more to wait for: every item has an outcome, or the call failed as a whole.
  [[nodiscard]] bool settled() const noexcept { return finished() || caller_error != nullptr; }
};

/// The pool whose progress callback runs on this thread, if any: a callback that calls into its own
/// pool would deadlock on the pool's mutex, which the thread already holds.
[[nodiscard]] inline const void*& callback_running_for() noexcept {
  static thread_local const void* core = nullptr;
  return core;
}

/// The pool's fixed settings, as the core needs them.
struct CoreSettings {
  std::size_t workers = 1;
  std::vector<int> cpus;  // empty: no pinning
  std::size_t chunk_size = 0;
  std::size_t max_tasks_per_worker = 0;
  std::chrono::nanoseconds task_timeout{0};
  std::function<void()> initializer;
};

class PoolCore {
 public:
  explicit PoolCore(CoreSettings settings) : settings_(std::move(settings)), owner_pid_(::getpid()) { start(); }
  PoolCore(const PoolCore&) = delete;
  PoolCore& operator=(const PoolCore&) = delete;
  ~PoolCore() { shutdown(/*graceful=*/false); }

  [[nodiscard]] std::size_t size() const noexcept { return settings_.workers; }

  /// The process that created this pool: only it can use the pool (workers and other children of
  /// it hold a copy of the object, not the pool).
  [[nodiscard]] pid_t owner_pid() const noexcept { return owner_pid_; }

  /// Throws procpool::Error when called from a progress callback of this pool: the callback runs
  /// with the pool's mutex held, so any call into the pool would deadlock.
  void check_not_in_callback() const {
    if (callback_running_for() == this)
      throw Error("procpool::Pool: a progress callback called into the pool that runs it; callbacks must not call "
                  "into their own pool (note what you need, and call the pool after the call returns)");
  }

  /// Registers a job (callable + runner) and returns its id; identical callables share an id, so
  /// a worker is sent a callable only when it switches to it.
  std::uint64_t register_job(RunnerFactory factory, const Buffer& callable) {
    check_not_in_callback();
    std::lock_guard lock(mu_);
    std::string key(reinterpret_cast<const char*>(&factory), sizeof factory);
    key.append(reinterpret_cast<const char*>(callable.data()), callable.size());
    if (const auto it = job_ids_.find(key); it != job_ids_.end()) {
      ++jobs_.at(it->second).users;
      return it->second;
    }
    const std::uint64_t id = next_job_id_++;
    Job& job = jobs_[id];
    job.key = key;
    job.frame.clear();
    const std::size_t at = begin_frame(job.frame, FrameKind::job, id);
    const auto address = reinterpret_cast<std::uintptr_t>(factory);
    job.frame.append(&address, sizeof address);
    job.frame.append(callable.data(), callable.size());
    end_frame(job.frame, at);
    job.users = 1;
    job_ids_.emplace(std::move(key), id);
    return id;
  }
  /// Queues a batch for execution and starts sending its first chunks.
  void add_batch(const std::shared_ptr<Batch>& batch) {
    check_not_in_callback();
    std::unique_lock lock(mu_);
    throw_if_unusable();
    if (batch->total_known) jobs_.at(batch->job_id).undispatched += batch->total;
    batches_.push_back(batch);
    if (!driving_) {
      fill_workers();
      flush_all();
    } else {
      wake_driver();
    }
  }

  /// Drives the pool until `done()` holds (checked with the core's mutex held), or until the
  /// deadline if one is given (then `done` should test the clock too).
  template <class Done>
  void wait_until(Done&& done, std::optional<std::chrono::steady_clock::time_point> deadline = std::nullopt) {
    check_not_in_callback();
    std::unique_lock lock(mu_);
    while (!done()) {
      if (stopped_) throw Error("procpool::Pool: the pool was shut down while this call waited on it");
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
    if (driving_ || stopped_) return;
    drive_round(lock, std::chrono::steady_clock::now(), /*spin=*/false);
  }

  /// Forgets a batch whose caller stopped waiting for it (its call returned or failed, or an imap
  /// range was destroyed): the rest of its input is never read, its progress callback never called
  /// again; chunks already out finish and are discarded.
  void forget(const std::shared_ptr<Batch>& batch) noexcept {
    // From a progress callback of this pool (an ImapResults destroyed there) this thread already
    // holds the mutex.
    std::unique_lock<std::mutex> lock;
    if (callback_running_for() != this) lock = std::unique_lock(mu_);
    batch->forgotten = true;
    stop_dispatch(*batch);
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
    closed_ = true;
  }

  [[nodiscard]] bool closed() const {
    check_not_in_callback();
    std::lock_guard lock(mu_);
    return closed_;
  }

  /// True when nothing is queued or running.
  [[nodiscard]] bool idle() const {
    std::lock_guard lock(mu_);
    return all_finished();
  }

  /// Waits for all submitted work, then stops the workers and the zygote (graceful), or kills
  /// them at once, failing whatever had not finished (not graceful). Pools of fresh workers this
  /// pool adopted go the same way.
  void shutdown(bool graceful) {
    check_not_in_callback();
    {
      std::lock_guard lock(mu_);
      if (stopped_) return;
      closed_ = true;
      if (!graceful) terminating_ = true;
      // A stream dispatches as it is consumed, and nobody may consume it any more: it is cut off
      // where it is, and its iteration ends with an error saying so, never silently short.
      for (const auto& b : batches_)
        if (b->streaming() && !b->source_done) cut_stream(*b, "the pool was shut down (close() and join(), "
                                                              "terminate(), or the Pool was destroyed)");
    }
    shutdown_adopted(graceful);
    if (graceful) wait_until([&] { return all_finished(); });
    std::unique_lock lock(mu_);
    if (stopped_) return;  // another thread finished the shutdown meanwhile
    if (!graceful) {
      terminating_ = true;
      for (auto& w : workers_) signal_worker(w, SIGKILL);
      fail_pending("the pool was terminated");
    }
    stopping_ = true;
    // No thread may still be inside drive_once: it reads the descriptors and the shared slots
    // that are released below.
    wake_driver();
    cv_.wait(lock, [&] { return !driving_; });
    // Workers see end-of-file on their sockets and exit; the zygote, seeing end-of-file on its
    // control socket, reaps them (killing any that linger) and exits. shutdown(), not just close:
    // a child the caller forked meanwhile holds copies of these descriptors, and its copy would
    // otherwise keep the sockets open, and the workers and the zygote waiting, as long as it lives.
    for (auto& w : workers_) {
      if (w.channel) ::shutdown(w.channel.get(), SHUT_RDWR);
      w.close();
      w.state = WorkerState::vacant;
      w.pid = -1;
    }
    if (control_) ::shutdown(control_.get(), SHUT_RDWR);
    control_.reset();
    if (zygote_pid_ > 0) {
      int status = 0;
      waitpid_retry(zygote_pid_, &status, 0);
      zygote_pid_ = -1;
    }
    if (slots_ != nullptr) {
      ::munmap(slots_, slots_bytes_);
      slots_ = nullptr;
    }
    stopped_ = true;
    cv_.notify_all();
  }


  /// Throws procpool::Error if no work can be submitted (closed, terminated, or broken).
  void ensure_usable() const {
    check_not_in_callback();
    std::lock_guard lock(mu_);
    throw_if_unusable();
  }

  void throw_if_unusable() const {
    if (closed_) throw Error("procpool::Pool: the pool is closed (close(), join() or terminate() was called); "
                             "no new work can be submitted");
    if (broken_) throw Error(*broken_);
  }

  /// Pids of the live workers (for tests and diagnostics).
  [[nodiscard]] std::vector<pid_t> worker_pids() const {
    check_not_in_callback();
    std::lock_guard lock(mu_);
    std::vector<pid_t> pids;
    for (const auto& w : workers_)
      if (w.state == WorkerState::running) pids.push_back(w.pid);
    return pids;
  }

  /// Protects the typed halves' state that the driver writes (sinks, progress).
  std::mutex& mutex() const {
    check_not_in_callback();
    return mu_;
  }

 private:
  enum class WorkerState { spawning, running, dead, vacant };

  struct Worker {
    int index = 0;
    pid_t pid = -1;
    WorkerState state = WorkerState::vacant;
    Fd channel;  // a stream socket to the worker: tasks out, results in
    Fd pidfd;
    Buffer out;  // bytes not yet written to the channel
    std::size_t out_sent = 0;
    FrameParser in;
    std::deque<std::uint64_t> in_flight;  // chunk ids, in the order sent
    std::array<std::uint64_t, LaneArea::kLanesPerWorker> lane_chunk{};  // the chunk holding each pair of lanes, 0: free
    std::uint64_t job_sent = 0;
    std::size_t items_assigned = 0;  // since spawn, for max_tasks_per_worker
    bool ready = false;
    bool retiring = false;
    std::optional<std::pair<std::uint64_t, std::uint32_t>> timed_out;  // chunk, local item
    std::optional<std::string> init_failure;
    std::optional<int> exit_status;  // waitpid status, once the zygote reported it
    int init_deaths = 0;             // deaths in a row before the initializer finished
    std::uint64_t generation = 0;    // counts spawns, so stale poll events are recognised
    std::chrono::steady_clock::time_point next_spawn_attempt{};
    std::chrono::steady_clock::time_point spawned_at{};  // when its spawn was reported
    bool init_timed_out = false;  // killed because its initializer outran the task timeout

    void close() {
      channel.reset();
      pidfd.reset();
    }
  };

  /// Consecutive items of one batch inside a chunk. A chunk may gather many small batches of the
  /// same job (a burst of submit() calls travels as one message).
  struct Segment {
    std::shared_ptr<Batch> batch;
    std::size_t first = 0;  // the batch's index of the segment's first item
    std::uint32_t count = 0;
  };

  struct Chunk {
    std::uint64_t job_id = 0;
    std::vector<Segment> segments;
    std::uint32_t count = 0;
    Buffer items;
    std::vector<std::uint32_t> skip;  // sorted local indices that already have an outcome
    std::uint32_t delivered = 0;      // items [0, delivered) of a half-decoded result have outcomes
    std::uint32_t lane = kNoLane;     // the pair of lanes it holds while in flight
    int unexplained_deaths = 0;
  };

  struct Job {
    std::string key;
    Buffer frame;
    std::size_t users = 0;
    double ns_per_item = 0;  // 0: not measured yet
    std::size_t undispatched = 0;  // items of known-size batches not yet in a chunk
    std::uint64_t last_used = 0;   // job_clock_ when it last became idle
  };
  static constexpr std::size_t kIdleJobs = 16;

  /// Walks a chunk's items in order, naming each one's batch and index there.
  template <class Visit>
  static void for_each_item(const Chunk& c, Visit&& visit) {
    std::uint32_t local = 0;
    for (const Segment& seg : c.segments)
      for (std::uint32_t k = 0; k < seg.count; ++k, ++local) visit(local, *seg.batch, seg.first + k);
  }

  /// Counts outcomes into a batch; a batch that is done drops its use of the job.
  void completed(Batch& b, std::size_t n) {
    b.completed += n;
    if (b.finished()) release_job(b.job_id);
  }

  /// One driving round by this thread, which becomes the driver for it.
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

  // ---- the caller's code, run by the pool ----------------------------------------------------

  /// Stops dispatching a batch: what is out finishes, nothing more of its input is read.
  void stop_dispatch(Batch& b) {
    if (b.source_done) return;
    if (b.total_known) jobs_.at(b.job_id).undispatched -= b.total - b.dispatched;
    b.source_done = true;
    b.total = b.dispatched;
    b.total_known = true;
    if (b.finished()) release_job(b.job_id);
  }

  /// The caller's own code threw while the pool ran it for batch b: that call fails with the
  /// exception, whichever thread was driving, and the pool goes on with the other calls.
  void fail_batch(Batch& b, std::exception_ptr error) {
    if (!b.caller_error) b.caller_error = std::move(error);
    stop_dispatch(b);
  }

  /// Ends a stream's dispatch where it is, because the pool stops; its iteration then ends with
  /// an error that says so, after the outcomes of what was dispatched.
  void cut_stream(Batch& b, const std::string& why) {
    if (!b.cut_reason)
      b.cut_reason = "procpool::Pool: this imap stopped after its first " + std::to_string(b.dispatched) +
                     " items; the rest of its input did not run because " + why +
                     ". Keep the Pool alive until the iteration is over";
    stop_dispatch(b);
  }

  /// Calls b's progress callback, if its caller still waits; an exception from it fails b's call.
  void report_progress(Batch& b) {
    if (b.forgotten || b.caller_error) return;
    const void* const outer = callback_running_for();
    callback_running_for() = this;
    try {
      b.on_progress();
    } catch (...) {
      fail_batch(b, std::current_exception());
    }
    callback_running_for() = outer;
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

  // ---- start-up -----------------------------------------------------------------------------

  void start() {
    slots_bytes_ = sizeof(WorkerSlot) * settings_.workers;
    void* mem = ::mmap(nullptr, slots_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) throw SystemError("procpool::Pool: cannot map the workers' shared slots", errno);
    slots_ = new (mem) WorkerSlot[settings_.workers];

    Fd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake) throw SystemError("procpool::Pool: cannot create an eventfd", errno);
    wake_ = std::move(wake);

    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
      throw SystemError("procpool::Pool: cannot create the zygote's control socket", errno);
    Fd ours(sv[0]);
    Fd theirs(sv[1]);

    zygote_setup_.slots = std::span<WorkerSlot>(slots_, settings_.workers);
    zygote_setup_.cpus = settings_.cpus;
    zygote_setup_.timed = settings_.task_timeout.count() > 0;
    zygote_setup_.initializer = &settings_.initializer;
    zygote_setup_.buffer_size = 1 << 20;
    lanes_ = LaneArea(settings_.workers);
    zygote_setup_.lanes = &lanes_;
    ::sigaction(SIGCHLD, nullptr, &zygote_setup_.caller_sigchld);
    const int zygote_end = theirs.get();
    const ZygoteSetup* setup = &zygote_setup_;
    zygote_pid_ = fork_child([zygote_end, setup] { return zygote_main(zygote_end, *setup); }, {zygote_end});
    theirs.reset();
    control_ = std::move(ours);
    lanes_.keep_from_later_forks();

    workers_.resize(settings_.workers);
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      workers_[i].index = static_cast<int>(i);
      request_spawn(workers_[i]);
    }
    // Wait for every first worker, so that a failing fork is reported by the constructor.
    std::vector<Fd> fds;
    while (std::any_of(workers_.begin(), workers_.end(), [](const Worker& w) { return w.state == WorkerState::spawning; })) {
      const auto m = receive_message(control_.get(), fds);
      if (!m) {
        shutdown_after_failed_start();
        throw Error("procpool::Pool: the zygote process ended during start-up");
      }
      handle_control(*m, fds);
    }
    set_nonblocking(control_.get(), true);
    started_ = true;
    // A worker that could not be forked fails the construction. (One whose initializer failed
    // does not: the pool is then constructed broken, and its calls say why.)
    if (!spawn_error_.empty() && !broken_) {
      const std::string why = spawn_error_;
      shutdown_after_failed_start();
      throw Error("procpool::Pool: cannot start the pool's workers: " + why);
    }
  }

  void shutdown_after_failed_start() {
    for (auto& w : workers_) signal_worker(w, SIGKILL);
    control_.reset();
    if (zygote_pid_ > 0) {
      int status = 0;
      waitpid_retry(zygote_pid_, &status, 0);
      zygote_pid_ = -1;
    }
    for (auto& w : workers_) w.close();
    ::munmap(slots_, slots_bytes_);
    slots_ = nullptr;
    stopped_ = true;
  }

  void request_spawn(Worker& w) {
    w.state = WorkerState::spawning;
    w.next_spawn_attempt = std::chrono::steady_clock::now() + std::chrono::milliseconds{100};
    if (send_message(control_.get(), {ZygoteMessage::Op::spawn, w.index, -1, 0}) != 0) {
      w.state = WorkerState::vacant;
      spawn_error_ = "the zygote process is gone";
    }
  }

  // ---- the driver ---------------------------------------------------------------------------

  /// One round: send what can be sent, sleep in poll until something happens, handle it.
  void drive_once(std::unique_lock<std::mutex>& lock, std::optional<std::chrono::steady_clock::time_point> deadline,
                  bool spin) {
    fill_workers();
    flush_all();

    // The driver's scratch vectors are members, reused across rounds (one driver at a time).
    std::vector<pollfd>& fds = poll_fds_;
    std::vector<PollOwner>& owner = poll_owners_;
    fds.clear();
    owner.clear();
    fds.push_back({control_.get(), POLLIN, 0});
    owner.push_back({-1, 0});
    fds.push_back({wake_.get(), POLLIN, 0});
    owner.push_back({-2, 0});
    for (auto& w : workers_) {
      if (w.channel) {
        const short events = static_cast<short>(POLLIN | (w.out.size() > w.out_sent ? POLLOUT : 0));
        fds.push_back({w.channel.get(), events, 0});
        owner.push_back({w.index, w.generation});
      }
      if (w.pidfd) {
        fds.push_back({w.pidfd.get(), POLLIN, 0});
        owner.push_back({w.index, w.generation});
      }
    }
    int timeout_ms = next_timer_ms();
    if (deadline) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - std::chrono::steady_clock::now());
      const int left_ms = static_cast<int>(std::max<std::int64_t>(0, left.count()));
      timeout_ms = timeout_ms < 0 ? left_ms : std::min(timeout_ms, left_ms);
    }

    // Spin briefly first, when a worker owes us results: they are often microseconds away, and
    // a blocking sleep costs a cross-core wake-up of tens of microseconds. The spin watches the
    // workers' write counters in shared memory, so it makes no system call.
    // Only when a result is due soon: on a machine with as many workers as cores, a parent that
    // spins while workers compute for milliseconds only takes their CPU.
    std::vector<Watched>& counters = watched_;
    counters.clear();
    for (const auto& w : workers_)
      if (spin && w.state == WorkerState::running && !w.in_flight.empty() && due_soon(w.in_flight.front()))
        counters.push_back({w.index, &slots_[w.index].to_parent, slots_[w.index].to_parent.load(std::memory_order_acquire)});

    lock.unlock();
    int ready = 0;
    std::vector<int>& wrote = wrote_;  // workers whose counter moved: read them without asking poll first
    wrote.clear();
    if (!counters.empty()) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds{50};
      for (unsigned k = 1; wrote.empty(); ++k) {
        for (const auto& c : counters)
          if (c.counter->load(std::memory_order_acquire) != c.seen) wrote.push_back(c.worker);
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (k % 64 == 0 && std::chrono::steady_clock::now() >= until) break;
        if (k % 1024 == 0) ::sched_yield();
      }
      if (wrote.empty()) ready = poll_retry(fds.data(), fds.size(), 0);
    }
    if (!wrote.empty()) {
      lock.lock();
      for (const int index : wrote) read_results(workers_[static_cast<std::size_t>(index)], /*process_ended=*/false);
      check_timeouts();
      fill_workers();
      flush_all();
      return;
    }
    if (ready <= 0) ready = poll_retry(fds.data(), fds.size(), timeout_ms);
    lock.lock();

    for (std::size_t k = 0; k < fds.size(); ++k) {
      if (fds[k].revents == 0) continue;
      if (owner[k].worker == -2) {
        std::uint64_t drained;
        (void)!::read(wake_.get(), &drained, sizeof drained);
      } else if (owner[k].worker == -1) {
        read_control();
      } else {
        Worker& w = workers_[static_cast<std::size_t>(owner[k].worker)];
        if (w.generation != owner[k].generation) continue;  // an event of a worker already replaced
        const bool on_channel = fds[k].fd == w.channel.get();
        if (on_channel && (fds[k].revents & POLLOUT) != 0) flush(w);
        if ((on_channel && (fds[k].revents & (POLLIN | POLLHUP | POLLERR)) != 0) || fds[k].fd == w.pidfd.get())
          read_results(w, /*process_ended=*/!on_channel);
      }
    }
    check_timeouts();
    respawn_vacant();
    fill_workers();
    flush_all();
  }

  /// Whether chunk `id` is expected to finish within a spin's worth of time (or nothing is known).
  [[nodiscard]] bool due_soon(std::uint64_t id) const { return expected_ns(id).value_or(0) < 200e3; }

  void wake_driver() {
    const std::uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
  }

  /// Milliseconds until the next task deadline or respawn retry, -1 for none.
  int next_timer_ms() {
    using namespace std::chrono;
    std::optional<nanoseconds> next;
    const auto consider = [&](nanoseconds d) {
      if (!next || d < *next) next = d;
    };
    if (settings_.task_timeout.count() > 0) {
      const std::int64_t now = monotonic_ns();
      const auto clock_now = std::chrono::steady_clock::now();
      for (const auto& w : workers_) {
        if (w.state == WorkerState::running && !w.init_timed_out &&
            slots_[w.index].initialized.load(std::memory_order_acquire) == 0)
          consider(std::max(nanoseconds{0}, w.spawned_at + settings_.task_timeout - clock_now));
        if (w.state != WorkerState::running || w.in_flight.empty()) continue;
        const WorkerSlot& s = slots_[w.index];
        const std::int64_t started = s.item_started_ns.load(std::memory_order_acquire);
        if (s.chunk_id.load(std::memory_order_acquire) != 0 && started != 0)
          consider(nanoseconds{std::max<std::int64_t>(0, started + settings_.task_timeout.count() - now)});
        else
          consider(settings_.task_timeout);
      }
    }
    for (const auto& w : workers_)
      if (w.state == WorkerState::vacant) consider(milliseconds{100});
    if (!next) return -1;
    return static_cast<int>(ceil<milliseconds>(*next).count());
  }

  // ---- sending ------------------------------------------------------------------------------

  /// A worker takes a chunk when it has none; a second one waits behind the first only when the
  /// first is known to be short. The second chunk hides the round trip between two chunks, which
  /// matters only for short ones; behind a long (or not yet measured) chunk it would hold items
  /// that an idle worker could be running.
  [[nodiscard]] bool accepting(const Worker& w) const {
    if (w.state != WorkerState::running || w.retiring || stopping_ || broken_) return false;
    if (w.in_flight.empty()) return true;
    return w.in_flight.size() < 2 && expected_ns(w.in_flight.back()).value_or(kPrefetchNs) < kPrefetchNs;
  }

  /// A chunk expected to take less than this may have a second one queued behind it.
  static constexpr double kPrefetchNs = 2e6;

  /// How long chunk `id` is expected to take, once its job's cost per item is measured.
  [[nodiscard]] std::optional<double> expected_ns(std::uint64_t id) const {
    const auto c = chunks_.find(id);
    if (c == chunks_.end()) return std::nullopt;
    const auto j = jobs_.find(c->second.job_id);
    if (j == jobs_.end() || j->second.ns_per_item == 0) return std::nullopt;
    return j->second.ns_per_item * static_cast<double>(c->second.count);
  }

  void fill_workers() {
    if (broken_) return;
    // Workers pinned to other CPUs first: a lone task then runs beside the caller, not in its way.
    // Every idle worker gets a chunk before any worker gets a second one: an idle worker never
    // waits while another holds a chunk it has not started.
    const int here = ::sched_getcpu();
    for (const std::size_t held : {std::size_t{0}, std::size_t{1}}) {
      for (const bool other_cpus : {true, false}) {
        for (auto& w : workers_) {
          if ((pinned_cpu(w) != here) != other_cpus) continue;
          if (w.in_flight.size() != held || !accepting(w)) continue;
          const std::optional<std::uint64_t> chunk = next_chunk_for(w);
          if (!chunk) break;
          send_chunk(w, *chunk);
        }
      }
    }
    // Batches with nothing left to dispatch leave the queue (chunks keep them alive until done).
    while (!batches_.empty() && batches_.front()->source_done) batches_.pop_front();
  }

  [[nodiscard]] int pinned_cpu(const Worker& w) const {
    return settings_.cpus.empty() ? -1 : settings_.cpus[static_cast<std::size_t>(w.index) % settings_.cpus.size()];
  }

  /// A chunk that failed on a dead worker goes first; otherwise a new chunk from the oldest batch
  /// with items left, topped up from later batches of the same job.
  std::optional<std::uint64_t> next_chunk_for(Worker& w) {
    if (!requeued_.empty()) {
      const std::uint64_t id = requeued_.front();
      requeued_.pop_front();
      return id;
    }
    constexpr std::size_t kMaxChunkBytes = std::size_t{8} << 20;
    Chunk c;
    // Items are encoded straight into a free items lane of the worker the chunk goes to (sent
    // from there when large, see send_chunk); otherwise into a buffer of a finished chunk.
    if (const std::uint32_t lane = free_lane(w); lane != kNoLane) {
      const std::span<std::byte> storage = lanes_.items(static_cast<std::size_t>(w.index), lane);
      c.items = Buffer::over(storage.data(), storage.size());
      c.lane = lane;
    } else if (!spare_item_buffers_.empty()) {
      c.items = std::move(spare_item_buffers_.back());
      spare_item_buffers_.pop_back();
    }
    std::size_t want = 0;
    for (const auto& b : batches_) {
      if (b->source_done) continue;
      if (c.count > 0 && b->job_id != c.job_id) continue;
      const std::size_t room = b->room();
      if (room == 0) continue;
      if (c.count == 0) {
        c.job_id = b->job_id;
        want = chunk_size_for(*b);
        if (settings_.max_tasks_per_worker > 0)
          want = std::min(want, settings_.max_tasks_per_worker - w.items_assigned);
        want = std::max<std::size_t>(1, std::min<std::size_t>(want, UINT32_MAX));
      }
      const std::size_t take = std::min(want - c.count, room);
      const std::size_t bytes_left = kMaxChunkBytes > c.items.size() ? kMaxChunkBytes - c.items.size() : 0;
      if (c.count > 0 && bytes_left == 0) break;
      const std::size_t mark = c.items.size();
      std::size_t got = 0;
      try {
        got = b->encode_next(take, std::max<std::size_t>(bytes_left, 1), c.items);
      } catch (...) {
        // The caller's input range or an item's serialize threw: that call fails with it, and
        // none of its items (not even those encoded before the throw) go out in this chunk.
        c.items.resize(mark);
        fail_batch(*b, std::current_exception());
        continue;
      }
      if (got > 0) {
        c.segments.push_back({b, b->dispatched, static_cast<std::uint32_t>(got)});
        c.count += static_cast<std::uint32_t>(got);
        b->dispatched += got;
        if (b->total_known) jobs_.at(b->job_id).undispatched -= got;
      }
      // A short chunk may only mean the byte limit was reached; the input is over when nothing
      // more came, or when a sized input has been fully dispatched.
      if ((got == 0 && take > 0) || (b->total_known && b->dispatched >= b->total)) {
        if (!b->total_known) {
          b->total = b->dispatched;
          b->total_known = true;
        }
        b->source_done = true;
        if (b->finished()) release_job(b->job_id);  // an empty input
      }
      if (c.count >= want || c.items.size() >= kMaxChunkBytes) break;
    }
    if (c.count == 0) return std::nullopt;
    const std::uint64_t id = next_chunk_id_++;
    chunks_.emplace(id, std::move(c));
    return id;
  }

  /// Automatic chunking: about a millisecond of work per chunk, measured from earlier chunks of the
  /// same job, but never so large that the tail of a known-size input cannot be balanced.
  [[nodiscard]] std::size_t chunk_size_for(const Batch& b) const {
    if (b.chunk_size > 0) return b.chunk_size;
    if (settings_.chunk_size > 0) return settings_.chunk_size;
    constexpr double kTargetNs = 1e6;
    const Job& job = jobs_.at(b.job_id);
    std::size_t n = job.ns_per_item > 0 ? static_cast<std::size_t>(std::clamp(kTargetNs / job.ns_per_item, 1.0, 1e6)) : 4;
    if (b.total_known) n = std::min(n, std::max<std::size_t>(1, job.undispatched / (2 * settings_.workers)));
    return std::max<std::size_t>(n, 1);
  }

  void send_chunk(Worker& w, std::uint64_t id) {
    Chunk& c = chunks_.at(id);
    if (w.job_sent != c.job_id) {
      const Buffer& frame = jobs_.at(c.job_id).frame;
      w.out.append(frame.data(), frame.size());
      w.job_sent = c.job_id;
    }
    // The chunk holds a pair of lanes (see LaneArea) until its results are decoded: large items
    // travel in its items lane, and the worker may leave large results in its results lane.
    // next_chunk_for encoded fresh chunks into the lane already; a re-queued chunk is copied there.
    std::span<const std::byte> items = c.items.view();
    std::uint64_t lane_bytes = 0;
    if (c.items.owns_storage()) c.lane = free_lane(w);
    if (c.lane != kNoLane) {
      w.lane_chunk[c.lane] = id;
      const std::span<std::byte> lane = lanes_.items(static_cast<std::size_t>(w.index), c.lane);
      if (items.size() >= kLaneThresholdBytes && items.size() <= lane.size()) {
        if (items.data() != lane.data()) std::memcpy(lane.data(), items.data(), items.size());
        lane_bytes = items.size();
        items = {};
      }
    }
    const std::size_t skip_bytes = c.skip.size() * sizeof(std::uint32_t);
    const FrameHeader h{FrameKind::chunk, 0, id, sizeof(ChunkHeader) + skip_bytes + items.size()};
    const ChunkHeader ch{c.job_id, c.count, static_cast<std::uint32_t>(c.skip.size()), c.lane, 0, lane_bytes};
    // The frame is its head (header, chunk header, skipped indices) and the encoded items.
    Buffer& head = chunk_head_;
    head.clear();
    head.append(&h, sizeof h);
    head.append(&ch, sizeof ch);
    head.append(c.skip.data(), skip_bytes);
    WorkerSlot& slot = slots_[w.index];
    const std::size_t frame_bytes = head.size() + items.size();
    // An idle worker with nothing queued gets a small chunk through its mailbox (see WorkerSlot).
    if (w.in_flight.empty() && w.out.empty() && frame_bytes <= WorkerSlot::kMailboxBytes &&
        slot.mailbox_full.load(std::memory_order_acquire) == 0) {
      std::memcpy(slot.mailbox, head.data(), head.size());
      if (!items.empty()) std::memcpy(slot.mailbox + head.size(), items.data(), items.size());
      slot.mailbox_length = static_cast<std::uint32_t>(frame_bytes);
      slot.mailbox_full.store(1, std::memory_order_seq_cst);
      if (slot.worker_asleep.load(std::memory_order_seq_cst) != 0) {
        const FrameHeader wake{FrameKind::wake, 0, 0, 0};
        w.out.append(&wake, sizeof wake);
      }
    } else if (w.out.empty() && items.size() >= kDirectSendBytes && w.channel) {
      send_directly(w, head, items);
    } else {
      w.out.append(head.data(), head.size());
      w.out.append(items.data(), items.size());
    }
    w.in_flight.push_back(id);
    w.items_assigned += c.count - c.skip.size();
    if (settings_.max_tasks_per_worker > 0 && w.items_assigned >= settings_.max_tasks_per_worker) w.retiring = true;
  }

  /// A pair of w's lanes no chunk holds, or kNoLane.
  [[nodiscard]] std::uint32_t free_lane(const Worker& w) const noexcept {
    if (!lanes_.available()) return kNoLane;
    for (std::uint32_t k = 0; k < w.lane_chunk.size(); ++k)
      if (w.lane_chunk[k] == 0) return k;
    return kNoLane;
  }

  /// Chunks of this many bytes or more go to the socket straight from their buffer when nothing
  /// is queued before them: only what the socket does not take at once is copied to w.out.
  static constexpr std::size_t kDirectSendBytes = std::size_t{64} << 10;

  /// Sends head + items straight from their buffers; queues in w.out only what the socket did not take.
  void send_directly(Worker& w, const Buffer& head, std::span<const std::byte> items) {
    iovec parts[2] = {{const_cast<std::byte*>(head.data()), head.size()},
                      {const_cast<std::byte*>(items.data()), items.size()}};
    msghdr msg{};
    msg.msg_iov = parts;
    msg.msg_iovlen = 2;
    ssize_t n;
    do {
      // MSG_NOSIGNAL: a dead worker's socket gives EPIPE, never a SIGPIPE in the caller.
      n = ::sendmsg(w.channel.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    // Nothing sent (full, or the worker died: flush() then finds out): all of it is queued.
    std::size_t sent = n > 0 ? static_cast<std::size_t>(n) : 0;
    if (sent > 0) slots_[w.index].to_worker.fetch_add(1, std::memory_order_release);
    if (sent < head.size()) {
      w.out.append(head.data() + sent, head.size() - sent);
      sent = 0;
    } else {
      sent -= head.size();
    }
    w.out.append(items.data() + sent, items.size() - sent);
  }

  void flush_all() {
    for (auto& w : workers_) flush(w);
  }

  void flush(Worker& w) {
    if (!w.channel) return;
    while (w.out_sent < w.out.size()) {
      // MSG_NOSIGNAL: a dead worker's socket gives EPIPE, never a SIGPIPE in the caller.
      const ssize_t n = ::send(w.channel.get(), w.out.data() + w.out_sent, w.out.size() - w.out_sent,
                               MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        w.out_sent += static_cast<std::size_t>(n);
        slots_[w.index].to_worker.fetch_add(1, std::memory_order_release);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      // EPIPE: the worker is dead; its death is handled when the result pipe or pidfd says so.
      w.out.clear();
      w.out_sent = 0;
      return;
    }
    if (w.out_sent == w.out.size()) {
      w.out.clear();
      w.out_sent = 0;
    } else if (w.out_sent > (std::size_t{1} << 20)) {
      w.out.erase_front(w.out_sent);
      w.out_sent = 0;
    }
    if (w.retiring && w.in_flight.empty()) send_shutdown(w);
  }

  void send_shutdown(Worker& w) {
    // Recycled (max_tasks_per_worker): asked to exit; replaced when its exit is reported.
    if (w.state != WorkerState::running) return;
    const FrameHeader h{FrameKind::shutdown, 0, 0, 0};
    w.out.append(&h, sizeof h);
    w.state = WorkerState::dead;  // no more work; its exit arrives through the zygote
    flush(w);
  }

  // ---- receiving ----------------------------------------------------------------------------

  void read_results(Worker& w, bool process_ended) {
    bool eof = false;
    while (w.channel) {
      // The rest of a large frame exactly (nothing after it then needs moving to the buffer's
      // front), else whatever has arrived, up to a megabyte.
      const std::size_t missing = w.in.missing();
      const std::size_t want = missing >= (std::size_t{64} << 10) ? missing : std::size_t{1} << 20;
      std::byte* dst = nullptr;
      try {
        dst = w.in.prepare(want);
      } catch (const std::bad_alloc&) {
        // A result too large for the parent's memory: fail what this worker holds, replace it.
        give_up_on(w, "procpool::Pool: the result of ",
                   " (worker " + std::to_string(w.index) + ") is too large to fit in the parent's memory (" +
                       std::to_string(w.in.pending()) + " bytes received so far)");
        return;
      }
      const ssize_t n = read_some(w.channel.get(), dst, want);
      w.in.commit(want, n > 0 ? static_cast<std::size_t>(n) : 0);
      if (n > 0) {
        if (!consume_frames(w)) return;
        // A short read emptied the socket for now (poll reports what comes next), unless the
        // worker has ended and everything it wrote must be drained now.
        if (static_cast<std::size_t>(n) < want && !process_ended) break;
        continue;
      }
      if (n < 0 && errno == EAGAIN) break;
      eof = true;
      break;
    }
    if (eof || process_ended) {
      // Everything the worker wrote before it ended has been read; its exit status comes from the zygote.
      if (process_ended && !eof) consume_frames(w);
      w.channel.reset();
      w.pidfd.reset();
      if (w.state == WorkerState::running) w.state = WorkerState::dead;
      maybe_finish_death(w);
    }
  }

  /// Handles the complete frames received from w; false if w sent garbage (it is then killed).
  bool consume_frames(Worker& w) {
    try {
      while (auto frame = w.in.next()) {
        const auto& [h, payload] = *frame;
        switch (h.kind) {
          case FrameKind::ready:
            w.ready = true;
            break;
          case FrameKind::init_failed: {
            Decoder d(payload);
            const auto info = decode_as<RemoteException>(d);
            w.init_failure = "procpool::Pool: the initializer threw " + info.type_name + ": " + info.what +
                             " in worker " + std::to_string(w.index);
            break;
          }
          case FrameKind::results:
            handle_results(w, h.id, payload);
            break;
          default:
            throw DecodeError("unexpected frame kind");
        }
      }
    } catch (const DecodeError& e) {
      // The worker's output is corrupt (its memory, or a task writing to our pipe): fail what it
      // had, and replace it.
      give_up_on(w, "procpool::Pool: worker " + std::to_string(w.index) + " sent a malformed message (" + e.what() +
                        ") for ", "");
      return false;
    } catch (const std::bad_alloc&) {
      give_up_on(w, "procpool::Pool: the result of ",
                 " (worker " + std::to_string(w.index) + ") is too large to fit in the parent's memory");
      return false;
    }
    return true;
  }

  /// Fails the items w holds with prefix + "item N" + suffix, and kills w (it is then replaced).
  void give_up_on(Worker& w, const std::string& prefix, const std::string& suffix) {
    for (std::uint64_t id : w.in_flight) fail_chunk(id, prefix, suffix);
    w.in_flight.clear();
    w.in = FrameParser{};
    signal_worker(w, SIGKILL);
    // It gets no more work, and whatever it still sends is not read: its death is handled when
    // the zygote reports its exit.
    w.close();
    if (w.state == WorkerState::running) w.state = WorkerState::dead;
  }

  void handle_results(Worker& w, std::uint64_t id, std::span<const std::byte> payload) {
    if (w.in_flight.empty() || w.in_flight.front() != id) throw DecodeError("results for a chunk not in flight");
    Chunk& c = chunks_.at(id);
    const bool holds_lane = c.lane < w.lane_chunk.size() && w.lane_chunk[c.lane] == id;
    const ParsedResults parsed =
        parse_results(payload, c.count,
                      holds_lane ? lanes_.results(static_cast<std::size_t>(w.index), c.lane) : std::span<std::byte>{});
    const auto& failed = parsed.failed;
    const Segment& only = c.segments.front();
    // A value whose decoding threw in the caller's own code (a serialize that validates): that
    // item fails with the exception. Where the next value starts is then unknown, so the items
    // after it run again (see resume_after).
    std::optional<std::uint32_t> resume_after;
    for (const Segment& seg : c.segments) seg.batch->note_results(seg.count, parsed.values.size() * seg.count / c.count);
    if (!(failed.empty() && c.skip.empty() && c.segments.size() == 1 &&
          only.batch->accept_bulk(only.first, only.count, parsed.values))) {
      Decoder vd(parsed.values);
      std::size_t f = 0;
      std::size_t s = 0;
      for_each_item(c, [&](std::uint32_t local, Batch& b, std::size_t index) {
        if (resume_after) return;
        if (s < c.skip.size() && c.skip[s] == local) {
          ++s;
        } else if (f < failed.size() && failed[f].first == local) {
          b.accept_error(index, std::make_exception_ptr(make_remote_error(
                                    failed[f].second,
                                    "procpool::Pool: " + b.describe(index) + " (worker " + std::to_string(w.index) + ")",
                                    index)));
          ++f;
        } else {
          try {
            b.accept_value(index, vd);
          } catch (const DecodeError&) {
            throw;  // malformed bytes: the worker is at fault (see consume_frames)
          } catch (const std::bad_alloc&) {
            throw;
          } catch (...) {
            b.accept_error(index, std::current_exception());
            resume_after = local;
          }
        }
        // Should a later item's bytes be corrupt, this one keeps the outcome it already has.
        c.delivered = local + 1;
      });
      if (!resume_after && vd.remaining() != 0) throw DecodeError("trailing bytes after the results");
    }
    if (resume_after) {
      resume_after_item(w, id, *resume_after);
      return;
    }
    const ResultsHeader& rh = parsed.header;
    const std::size_t ran = c.count - c.skip.size();
    if (ran > 0 && rh.compute_ns > 0) {
      Job& job = jobs_.at(c.job_id);
      const double sample = static_cast<double>(rh.compute_ns) / static_cast<double>(ran);
      job.ns_per_item = job.ns_per_item == 0 ? sample : 0.5 * job.ns_per_item + 0.5 * sample;
    }
    // Decoded: the worker may now be sent a chunk that writes over these lanes.
    if (holds_lane) w.lane_chunk[c.lane] = 0;
    w.in_flight.pop_front();
    finish_chunk(id);
    if (w.retiring && w.in_flight.empty()) send_shutdown(w);
  }

  /// Items [0, last] of chunk `id`, which w answered, have their outcomes; the chunk's later items
  /// run again (on whichever worker is free first), because their values could not be located.
  void resume_after_item(Worker& w, std::uint64_t id, std::uint32_t last) {
    Chunk& c = chunks_.at(id);
    std::vector<std::uint32_t> done;
    std::size_t s = 0;
    for_each_item(c, [&](std::uint32_t local, Batch& b, std::size_t) {
      if (local > last) return;
      if (s < c.skip.size() && c.skip[s] == local) {
        ++s;
        return;
      }
      done.push_back(local);
      completed(b, 1);
      report_progress(b);
    });
    std::vector<std::uint32_t> skip;
    std::merge(c.skip.begin(), c.skip.end(), done.begin(), done.end(), std::back_inserter(skip));
    c.skip = std::move(skip);
    c.delivered = 0;
    w.in_flight.pop_front();
    if (c.skip.size() == c.count) {
      if (c.lane < w.lane_chunk.size() && w.lane_chunk[c.lane] == id) w.lane_chunk[c.lane] = 0;
      chunks_.erase(id);
    } else {
      take_out_of_lane(w, id);
      requeued_.push_front(id);
    }
    if (w.retiring && w.in_flight.empty()) send_shutdown(w);
  }

  /// A chunk about to run again moves its items out of w's lanes, which w (or its replacement)
  /// will be sent other chunks through, and gives the lanes back.
  void take_out_of_lane(Worker& w, std::uint64_t id) {
    Chunk& c = chunks_.at(id);
    if (!c.items.owns_storage()) {
      Buffer own;
      own.append(c.items.data(), c.items.size());
      c.items = std::move(own);
    }
    if (c.lane < w.lane_chunk.size() && w.lane_chunk[c.lane] == id) w.lane_chunk[c.lane] = 0;
    c.lane = kNoLane;
  }

  /// Counts a chunk's items that had no outcome before into their batches, reports progress, and
  /// forgets the chunk.
  void finish_chunk(std::uint64_t id) {
    const auto it = chunks_.find(id);
    if (it == chunks_.end()) return;
    Chunk c = std::move(it->second);
    chunks_.erase(it);
    // Its buffer serves a later chunk: large items are then encoded into memory already mapped,
    // not into fresh pages (see prefault_for_write).
    std::size_t spare_bytes = c.items.capacity();
    for (const Buffer& b : spare_item_buffers_) spare_bytes += b.capacity();
    if (c.items.owns_storage() && spare_item_buffers_.size() < kSpareItemBuffers && spare_bytes <= kMaxSpareBytes) {
      c.items.clear();
      spare_item_buffers_.push_back(std::move(c.items));
    }
    std::size_t s = 0;
    std::uint32_t local = 0;
    for (const Segment& seg : c.segments) {
      std::size_t fresh = 0;
      for (std::uint32_t k = 0; k < seg.count; ++k, ++local) {
        if (s < c.skip.size() && c.skip[s] == local) {
          ++s;
        } else {
          ++fresh;
        }
      }
      completed(*seg.batch, fresh);
      report_progress(*seg.batch);
    }
  }

  /// A batch that finished drops its use of its job. A job nobody uses is kept for a while: the
  /// next call with the same callable (a loop of submit + get, or of maps) then keeps its id, so
  /// workers that hold it are not sent it again, and its measured cost per item still sizes
  /// chunks. Beyond kIdleJobs, the idle job used longest ago is forgotten.
  void release_job(std::uint64_t job_id) {
    const auto it = jobs_.find(job_id);
    if (it == jobs_.end() || --it->second.users > 0) return;
    it->second.last_used = ++job_clock_;
    std::size_t idle = 0;
    auto oldest = jobs_.end();
    for (auto j = jobs_.begin(); j != jobs_.end(); ++j) {
      if (j->second.users != 0) continue;
      ++idle;
      if (oldest == jobs_.end() || j->second.last_used < oldest->second.last_used) oldest = j;
    }
    if (idle <= kIdleJobs) return;
    job_ids_.erase(oldest->second.key);
    jobs_.erase(oldest);
  }

  // ---- deaths -------------------------------------------------------------------------------

  void read_control() {
    std::vector<Fd> fds;
    for (;;) {
      bool would_block = false;
      const auto m = receive_message(control_.get(), fds, &would_block);
      if (!m) {
        if (!would_block) zygote_gone();
        return;
      }
      handle_control(*m, fds);
    }
  }

  void handle_control(const ZygoteMessage& m, std::vector<Fd>& fds) {
    switch (m.op) {
      case ZygoteMessage::Op::spawned: {
        if (m.index < 0 || static_cast<std::size_t>(m.index) >= workers_.size()) return;
        Worker& w = workers_[static_cast<std::size_t>(m.index)];
        if (fds.empty()) {
          // The descriptors did not arrive (we are at RLIMIT_NOFILE: the kernel drops them). The
          // worker sees its pipes close and exits; try again later.
          w.state = WorkerState::vacant;
          spawn_error_ = std::string("cannot receive the new worker's socket: ") + std::strerror(EMFILE) +
                         " (the open-file limit RLIMIT_NOFILE is reached)";
          if (started_) no_workers_left_check();
          return;
        }
        w.pid = m.pid;
        w.channel = std::move(fds[0]);
        if (fds.size() > 1) w.pidfd = std::move(fds[1]);
        set_nonblocking(w.channel.get(), true);
        w.state = WorkerState::running;
        ++w.generation;
        w.in = FrameParser{};
        w.out.clear();
        w.out_sent = 0;
        w.in_flight.clear();
        w.lane_chunk = {};
        w.job_sent = 0;
        w.items_assigned = 0;
        w.ready = false;
        w.retiring = false;
        w.timed_out.reset();
        w.init_failure.reset();
        w.exit_status.reset();
        w.spawned_at = std::chrono::steady_clock::now();
        w.init_timed_out = false;
        slots_[w.index].chunk_id.store(0, std::memory_order_relaxed);
        slots_[w.index].item_started_ns.store(0, std::memory_order_relaxed);
        if (stopping_) send_shutdown(w);
        break;
      }
      case ZygoteMessage::Op::spawn_failed: {
        if (m.index < 0 || static_cast<std::size_t>(m.index) >= workers_.size()) return;
        Worker& w = workers_[static_cast<std::size_t>(m.index)];
        w.state = WorkerState::vacant;
        spawn_error_ = std::string("the zygote could not create a worker: ") + std::strerror(m.value) +
                       (m.value == EAGAIN   ? " (the process limit RLIMIT_NPROC or the system's pid limit is reached)"
                        : m.value == EMFILE ? " (the open-file limit RLIMIT_NOFILE is reached)"
                                            : "");
        if (started_) no_workers_left_check();
        break;
      }
      case ZygoteMessage::Op::exited: {
        for (auto& w : workers_) {
          if (w.pid == m.pid && !w.exit_status) {
            w.exit_status = m.value;
            if (w.channel) read_results(w, /*process_ended=*/true);  // drains, then finishes the death
            else maybe_finish_death(w);
            break;
          }
        }
        break;
      }
      default:
        break;
    }
  }

  /// A worker's death is handled once both its pipes have closed and the zygote has reported its
  /// exit status: then the item it was running is blamed, its other chunks re-queued, and a
  /// replacement requested.
  void maybe_finish_death(Worker& w) {
    if (w.channel || !w.exit_status || w.state == WorkerState::vacant || w.state == WorkerState::spawning) return;
    const int code = exitcode_from_status(*w.exit_status);
    w.exit_status.reset();
    const WorkerSlot& slot = slots_[w.index];
    const std::uint64_t running_chunk = slot.chunk_id.load(std::memory_order_acquire);
    const std::uint32_t running_item = slot.item.load(std::memory_order_acquire);
    const std::string who = "worker " + std::to_string(w.index) + " (pid " + std::to_string(w.pid) + ")";

    // An initializer that throws breaks the pool for good; one that dies might have been killed
    // from outside, so only three deaths in a row before it finishes count as broken.
    w.init_deaths = w.ready ? 0 : w.init_deaths + 1;
    if (w.init_timed_out && !stopping_ && !terminating_) {
      broken_ = "procpool::Pool: the initializer ran longer than the task timeout of " +
                std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(settings_.task_timeout).count()) +
                " ms in " + who + ", which was killed; the pool cannot start workers (make the initializer return "
                "sooner, or raise task_timeout)";
    } else if (!stopping_ && !terminating_ && (w.init_failure || w.init_deaths >= 3)) {
      broken_ = w.init_failure ? *w.init_failure
                               : "procpool::Pool: " + who + " " + describe_ending(code) +
                                     " while running the initializer, three times in a row";
    }

    bool first = true;
    std::deque<std::uint64_t> again;
    for (std::uint64_t id : w.in_flight) {
      auto it = chunks_.find(id);
      if (it == chunks_.end()) continue;
      Chunk& c = it->second;
      if (first && running_chunk == id && running_item < c.count) {
        Batch* owner = nullptr;
        std::size_t index = 0;
        for_each_item(c, [&](std::uint32_t local, Batch& b, std::size_t i) {
          if (local == running_item) {
            owner = &b;
            index = i;
          }
        });
        Batch& b = *owner;
        std::exception_ptr error;
        if (w.timed_out && w.timed_out->first == id) {
          error = std::make_exception_ptr(TimeoutError(
              "procpool::Pool: " + b.describe(index) + " ran longer than the task timeout of " +
                  std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(settings_.task_timeout).count()) +
                  " ms; " + who + " was killed and replaced",
              index));
        } else {
          error = std::make_exception_ptr(
              ProcessError("procpool::Pool: " + who + " " + describe_ending(code) + " while running " +
                               b.describe(index) + "; the worker was replaced",
                           code, index));
        }
        b.accept_error(index, error);
        c.skip.insert(std::upper_bound(c.skip.begin(), c.skip.end(), running_item), running_item);
        completed(b, 1);
        report_progress(b);
      } else if (first) {
        // The worker died outside any item (killed while idle, or while writing results): the
        // chunk is simply run again, a bounded number of times.
        if (++c.unexplained_deaths >= 3) {
          fail_chunk(id, "procpool::Pool: " + who + " " + describe_ending(code) +
                             " three times while handling the chunk holding ");
          continue;
        }
      }
      first = false;
      if (c.skip.size() == c.count) {
        chunks_.erase(id);
      } else {
        take_out_of_lane(w, id);
        again.push_back(id);
      }
    }
    w.in_flight.clear();
    for (auto it = again.rbegin(); it != again.rend(); ++it) requeued_.push_front(*it);
    slots_[w.index].chunk_id.store(0, std::memory_order_relaxed);
    slots_[w.index].initialized.store(0, std::memory_order_relaxed);
    // Cleared now that the worker is reaped and before a replacement is forked (which could
    // otherwise take a chunk left there, already re-queued above, for a job it does not have).
    slots_[w.index].mailbox_full.store(0, std::memory_order_relaxed);
    slots_[w.index].worker_asleep.store(0, std::memory_order_relaxed);
    w.close();
    w.state = WorkerState::vacant;
    w.pid = -1;
    if (!stopping_ && !terminating_ && !broken_) request_spawn(w);
    if (broken_) fail_pending(*broken_);
    if (started_ && !broken_) no_workers_left_check();
  }

  /// Fails every item of chunk `id` that has no outcome yet, with `prefix` + "item N" + `suffix`.
  void fail_chunk(std::uint64_t id, const std::string& prefix, const std::string& suffix = "") {
    auto it = chunks_.find(id);
    if (it == chunks_.end()) return;
    const Chunk& c = it->second;
    std::size_t s = 0;
    for_each_item(c, [&](std::uint32_t local, Batch& b, std::size_t index) {
      if (s < c.skip.size() && c.skip[s] == local) {
        ++s;
        return;
      }
      if (local < c.delivered) return;
      b.accept_error(index, std::make_exception_ptr(Error(prefix + b.describe(index) + suffix)));
    });
    finish_chunk(id);
  }

  /// Fails everything not yet finished: chunks out and items not yet dispatched.
  void fail_pending(const std::string& why) {
    for (auto& w : workers_) w.in_flight.clear();
    requeued_.clear();
    std::vector<std::uint64_t> ids;
    for (const auto& [id, c] : chunks_) ids.push_back(id);
    for (std::uint64_t id : ids) fail_chunk(id, "procpool::Pool: ", " did not complete: " + why);
    fail_undispatched(why);
  }

  void zygote_gone() {
    control_.reset();
    if (!stopping_) {
      broken_ = "procpool::Pool: the pool's zygote process ended unexpectedly; the pool cannot replace workers";
      for (auto& w : workers_) signal_worker(w, SIGKILL);
      fail_pending("the pool's zygote process ended unexpectedly");
    }
    for (auto& w : workers_) {
      w.close();
      w.state = WorkerState::vacant;
    }
  }

  void no_workers_left_check() {
    const bool any = std::any_of(workers_.begin(), workers_.end(), [](const Worker& w) {
      return w.state == WorkerState::running || w.state == WorkerState::spawning;
    });
    if (!any) fail_pending("no worker could be started (" + spawn_error_ + ")");
  }

  /// Fails the items no chunk holds yet, by index: the caller's input is not read for it (it may be
  /// long, endless, or throw). A stream is cut off instead (its iteration ends with the reason).
  void fail_undispatched(const std::string& why) {
    for (const auto& b : batches_) {
      if (b->source_done) continue;
      if (b->streaming() || !b->total_known) {
        cut_stream(*b, why);
        continue;
      }
      const std::size_t n = b->total - b->dispatched;
      for (std::size_t i = b->dispatched; i < b->total; ++i)
        b->accept_error(i, std::make_exception_ptr(Error("procpool::Pool: " + b->describe(i) + " did not run: " + why)));
      jobs_.at(b->job_id).undispatched -= n;
      b->dispatched = b->total;
      b->source_done = true;
      completed(*b, n);
      report_progress(*b);
    }
  }

  void respawn_vacant() {
    if (stopping_ || terminating_ || broken_ || !control_) return;
    const auto now = std::chrono::steady_clock::now();
    for (auto& w : workers_)
      if (w.state == WorkerState::vacant && now >= w.next_spawn_attempt) request_spawn(w);
  }

  void check_timeouts() {
    if (settings_.task_timeout.count() <= 0) return;
    const std::int64_t now = monotonic_ns();
    const auto clock_now = std::chrono::steady_clock::now();
    for (auto& w : workers_) {
      // The timeout covers the initializer too: a worker that never finishes it never runs a task.
      if (w.state == WorkerState::running && !w.init_timed_out &&
          slots_[w.index].initialized.load(std::memory_order_acquire) == 0 &&
          clock_now - w.spawned_at >= settings_.task_timeout) {
        w.init_timed_out = true;
        signal_worker(w, SIGKILL);
        continue;
      }
      if (w.state != WorkerState::running || w.in_flight.empty() || w.timed_out) continue;
      const WorkerSlot& s = slots_[w.index];
      const std::uint64_t chunk = s.chunk_id.load(std::memory_order_acquire);
      const std::int64_t started = s.item_started_ns.load(std::memory_order_acquire);
      if (chunk == 0 || started == 0 || now - started < settings_.task_timeout.count()) continue;
      w.timed_out = std::make_pair(chunk, s.item.load(std::memory_order_acquire));
      signal_worker(w, SIGKILL);
    }
  }

  void signal_worker(Worker& w, int sig) {
    if (w.pid <= 0 || (w.state != WorkerState::running && w.state != WorkerState::dead)) return;
#ifdef SYS_pidfd_send_signal
    if (w.pidfd && ::syscall(SYS_pidfd_send_signal, w.pidfd.get(), sig, nullptr, 0) == 0) return;
#endif
    // Without a pidfd: the zygote has not reported this pid's exit, so it is not reaped and
    // cannot have been reused.
    ::kill(w.pid, sig);
  }

  [[nodiscard]] bool all_finished() const {
    return chunks_.empty() && std::all_of(batches_.begin(), batches_.end(), [](const auto& b) { return b->source_done; });
  }

  CoreSettings settings_;
  ZygoteSetup zygote_setup_;

  // The driver's scratch space (see drive_once).
  struct PollOwner {
    int worker;  // -1 control, -2 wake
    std::uint64_t generation;
  };
  struct Watched {
    int worker;
    const std::atomic<std::uint64_t>* counter;
    std::uint64_t seen;
  };
  std::vector<pollfd> poll_fds_;
  std::vector<PollOwner> poll_owners_;
  std::vector<Watched> watched_;
  std::vector<int> wrote_;
  Buffer chunk_head_;  // send_chunk's scratch
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool driving_ = false;
  std::thread::id driver_thread_{};

  WorkerSlot* slots_ = nullptr;
  std::size_t slots_bytes_ = 0;
  LaneArea lanes_;
  Fd control_;
  Fd wake_;
  pid_t zygote_pid_ = -1;
  std::vector<Worker> workers_;
  std::string spawn_error_;

  std::deque<std::shared_ptr<Batch>> batches_;
  std::unordered_map<std::uint64_t, Chunk> chunks_;
  std::deque<std::uint64_t> requeued_;
  // Encoding buffers of finished chunks kept for the next ones, at most this many and this much.
  static constexpr std::size_t kSpareItemBuffers = 4;
  static constexpr std::size_t kMaxSpareBytes = std::size_t{32} << 20;
  std::vector<Buffer> spare_item_buffers_;
  std::unordered_map<std::uint64_t, Job> jobs_;
  std::unordered_map<std::string, std::uint64_t> job_ids_;
  std::uint64_t next_job_id_ = 1;
  std::uint64_t job_clock_ = 0;
  std::uint64_t next_chunk_id_ = 1;

  const pid_t owner_pid_;
  // Pools of fresh workers serving calls of this one (see adopt). Its own mutex, never held while
  // calling into them: their progress callbacks may call this pool.
  std::mutex adopted_mu_;
  std::vector<std::shared_ptr<PoolCore>> adopted_;

  bool started_ = false;
  bool closed_ = false;
  bool stopping_ = false;
  bool terminating_ = false;
  bool stopped_ = false;
  std::optional<std::string> broken_;
};

}  // namespace procpool::detail
