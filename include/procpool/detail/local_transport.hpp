// procpool::detail: the transport to worker processes on this machine.
//
// Each worker has a stream socket (chunks out, results in), a slot of shared memory (what it runs
// now, a mailbox for small chunks, write counters to spin on) and lanes of shared memory for large
// items and results. Every descriptor is non-blocking and polled in both directions, so a full
// socket never deadlocks the parent against a worker. Workers are forked by the zygote, which also
// reports how they ended.
#pragma once

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include <fmt/core.h>

#include "../error.hpp"
#include "child_process.hpp"
#include "fd.hpp"
#include "lanes.hpp"
#include "messages.hpp"
#include "scheduler.hpp"
#include "wire.hpp"
#include "worker.hpp"
#include "zygote_client.hpp"

namespace procpool::detail {

/// The scheduler's clock for local workers: CLOCK_MONOTONIC, which workers stamp items with.
class MonotonicClock final : public Clock {
 public:
  [[nodiscard]] std::int64_t now_ns() const override { return monotonic_ns(); }
};

/// What the driver waits on for one round: descriptors to poll, and write counters in shared
/// memory to spin on first (a result is often microseconds away, and a blocking sleep costs a
/// cross-core wake-up of tens of microseconds).
struct WaitSet {
  struct Owner {
    int worker;  // kControl, kWake, or a worker index
    std::uint64_t generation;
  };
  struct Counter {
    std::size_t worker;
    const std::atomic<std::uint64_t>* counter;
    std::uint64_t seen;
  };
  static constexpr int kControl = -1;
  static constexpr int kWake = -2;
  std::vector<pollfd> fds;
  std::vector<Owner> owners;
  std::vector<Counter> counters;
};

class LocalTransport final : public Transport {
 public:
  explicit LocalTransport(const Settings& settings) : settings_(settings), workers_(settings.workers) {
    for (std::size_t i = 0; i < workers_.size(); ++i) workers_[i].index = i;
  }
  LocalTransport(const LocalTransport&) = delete;
  LocalTransport& operator=(const LocalTransport&) = delete;
  ~LocalTransport() override { close(); }

  /// Maps the shared memory, forks the zygote and the first workers, and waits until every one is
  /// running (or could not be started). Throws if the pool cannot start.
  void start(Scheduler& scheduler) {
    scheduler_ = &scheduler;
    slots_bytes_ = sizeof(WorkerSlot) * workers_.size();
    void* mem = ::mmap(nullptr, slots_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) throw SystemError("procpool::Pool: cannot map the workers' shared slots", errno);
    slots_ = new (mem) WorkerSlot[workers_.size()];
    wake_ = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_) throw SystemError("procpool::Pool: cannot create an eventfd", errno);
    lanes_ = LaneArea(workers_.size());
    zygote_setup_.settings = &settings_;
    zygote_setup_.slots = std::span<WorkerSlot>(slots_, workers_.size());
    zygote_setup_.buffer_size = 1 << 20;
    zygote_setup_.lanes = &lanes_;
    ::sigaction(SIGCHLD, nullptr, &zygote_setup_.caller_sigchld);
    zygote_.start(zygote_setup_);
    lanes_.keep_from_later_forks();

    for (std::size_t w = 0; w < workers_.size(); ++w) scheduler.request_worker(w);
    // Wait for every first worker, so that a failing fork is reported by the constructor.
    std::vector<Fd> fds;
    for (;;) {
      bool any_starting = false;
      for (std::size_t w = 0; w < workers_.size(); ++w) any_starting = any_starting || scheduler.starting(w);
      if (!any_starting) break;
      bool gone = false;
      const auto m = zygote_.next(fds, gone);
      if (!m) throw Error("procpool::Pool: the zygote process ended during start-up");
      handle_control(*m, fds);
    }
    zygote_.stop_blocking();
  }

  /// Wakes the driver from its wait (another thread queued work or wants it to stop).
  void wake() noexcept {
    const std::uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
  }

  /// Fills `ws` with what to wait on; counters of workers owing results soon when `spin`.
  void prepare_wait(WaitSet& ws, bool spin) const {
    ws.fds.clear();
    ws.owners.clear();
    ws.counters.clear();
    ws.fds.push_back({zygote_.fd(), POLLIN, 0});
    ws.owners.push_back({WaitSet::kControl, 0});
    ws.fds.push_back({wake_.get(), POLLIN, 0});
    ws.owners.push_back({WaitSet::kWake, 0});
    for (const LocalWorker& w : workers_) {
      const int index = static_cast<int>(w.index);
      if (w.channel) {
        const short events = static_cast<short>(POLLIN | (w.out.size() > w.out_sent ? POLLOUT : 0));
        ws.fds.push_back({w.channel.get(), events, 0});
        ws.owners.push_back({index, w.generation});
      }
      if (w.process.readable_fd() >= 0) {
        ws.fds.push_back({w.process.readable_fd(), POLLIN, 0});
        ws.owners.push_back({index, w.generation});
      }
      if (spin && w.channel && scheduler_->result_due_soon(w.index)) {
        const auto& counter = slots_[w.index].to_parent;
        ws.counters.push_back({w.index, &counter, counter.load(std::memory_order_acquire)});
      }
    }
  }

  /// Handles what poll reported in `ws`.
  void handle_events(const WaitSet& ws) {
    for (std::size_t k = 0; k < ws.fds.size(); ++k) {
      const pollfd& p = ws.fds[k];
      if (p.revents == 0) continue;
      const WaitSet::Owner& owner = ws.owners[k];
      if (owner.worker == WaitSet::kWake) {
        std::uint64_t drained;
        (void)!::read(wake_.get(), &drained, sizeof drained);
        continue;
      }
      if (owner.worker == WaitSet::kControl) {
        read_control();
        continue;
      }
      LocalWorker& w = workers_[static_cast<std::size_t>(owner.worker)];
      if (w.generation != owner.generation) continue;  // an event of a worker already replaced
      const bool on_channel = p.fd == w.channel.get();
      if (on_channel && (p.revents & POLLOUT) != 0) flush(w);
      if ((on_channel && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0) || p.fd == w.process.readable_fd())
        read_results(w, /*process_ended=*/!on_channel);
    }
  }

  /// Reads the results of a worker whose write counter moved (seen while spinning).
  void read_worker(std::size_t w) { read_results(workers_[w], /*process_ended=*/false); }

  /// Sends whatever is queued, as far as the sockets take it.
  void flush_all() {
    for (LocalWorker& w : workers_) flush(w);
  }

  /// Pids of the live workers.
  [[nodiscard]] std::vector<pid_t> pids() const {
    std::vector<pid_t> out;
    for (const LocalWorker& w : workers_)
      if (w.process && scheduler_ != nullptr && scheduler_->running(w.index)) out.push_back(w.process.pid());
    return out;
  }

  /// Ends the workers and the zygote and releases everything: workers see end-of-file on their
  /// sockets and exit; the zygote reaps them (killing any that linger) and exits. shutdown(), not
  /// just close: a child the caller forked meanwhile holds copies of these descriptors.
  void close() noexcept {
    for (LocalWorker& w : workers_) {
      if (w.channel) ::shutdown(w.channel.get(), SHUT_RDWR);
      w.channel.reset();
      w.process = ForeignProcess();
    }
    zygote_.stop();
    if (slots_ != nullptr) {
      ::munmap(slots_, slots_bytes_);
      slots_ = nullptr;
    }
  }

  // ---- Transport -------------------------------------------------------------------------------

  void lend_storage(std::size_t w, Chunk& c) override {
    const std::uint32_t lane = free_lane(workers_[w]);
    if (lane == kNoLane) return;
    const std::span<std::byte> storage = lanes_.items(w, lane);
    c.items = Buffer::over(storage.data(), storage.size());
    c.lane = lane;
  }

  void send(std::size_t index, std::uint64_t id, Chunk& c, const Job& job, bool idle) override;

  void release(std::size_t w, std::uint64_t id, Chunk& c) override {
    LocalWorker& lw = workers_[w];
    if (c.lane < lw.lane_chunk.size() && lw.lane_chunk[c.lane] == id) lw.lane_chunk[c.lane] = 0;
  }

  void retire(std::size_t w) override {
    append_shutdown_frame(workers_[w].out);
    flush(workers_[w]);
  }

  void kill(std::size_t w) override {
    // Does nothing once its exit is reported (the zygote reaped it, and its pid may be reused).
    (void)workers_[w].process.signal(SIGKILL);
  }

  void replace(std::size_t w) override {
    // Cleared before the replacement is forked: it could otherwise take a chunk left in the
    // mailbox (already re-queued) for a job it does not have, or be blamed for its predecessor.
    WorkerSlot& s = slots_[w];
    s.chunk_id.store(0, std::memory_order_relaxed);
    s.item_started_ns.store(0, std::memory_order_relaxed);
    s.initialized.store(0, std::memory_order_relaxed);
    s.mailbox_full.store(0, std::memory_order_relaxed);
    s.worker_asleep.store(0, std::memory_order_relaxed);
    // A zygote that is gone is noticed on its control socket, and the pool breaks then.
    (void)zygote_.request_worker(static_cast<int>(w));
  }

  RunningItem withdraw(std::size_t w, std::uint64_t id, std::uint32_t from) override {
    WorkerSlot& s = slots_[w];
    s.withdraw_from.store(from, std::memory_order_relaxed);
    s.withdraw_chunk.store(id, std::memory_order_seq_cst);
    // Written, then the item read, in sequential consistency, as the worker publishes an item and
    // then reads the withdrawal (runner.hpp): one of the two sees the other.
    RunningItem at;
    at.item = s.item.load(std::memory_order_seq_cst);
    at.chunk = s.chunk_id.load(std::memory_order_seq_cst);
    at.started_ns = s.item_started_ns.load(std::memory_order_acquire);
    return at;
  }

  [[nodiscard]] RunningItem running(std::size_t w) const override {
    const WorkerSlot& s = slots_[w];
    RunningItem at;
    at.chunk = s.chunk_id.load(std::memory_order_acquire);
    at.item = s.item.load(std::memory_order_acquire);
    at.started_ns = s.item_started_ns.load(std::memory_order_acquire);
    return at;
  }

  [[nodiscard]] bool initialized(std::size_t w) const override {
    return slots_[w].initialized.load(std::memory_order_acquire) != 0;
  }

  [[nodiscard]] std::string describe(std::size_t w) const override {
    return describe_worker(static_cast<int>(w), workers_[w].process.pid());
  }

  void dispatch_begins() override { callers_cpu_ = settings_.cpus.empty() ? -1 : ::sched_getcpu(); }
  [[nodiscard]] bool on_callers_cpu(std::size_t w) const override {
    return callers_cpu_ >= 0 && settings_.cpu_of(w) == callers_cpu_;
  }

 private:
  struct LocalWorker {
    std::size_t index = 0;
    ForeignProcess process;  // a child of the zygote, which reaps it and reports how it ended
    Fd channel;              // a stream socket to the worker: chunks out, results in
    Buffer out;              // bytes not yet written to the channel
    std::size_t out_sent = 0;
    FrameParser in;
    std::array<std::uint64_t, LaneArea::kLanesPerWorker> lane_chunk{};  // the chunk holding each pair, 0: free
    std::uint64_t job_sent = 0;
    std::uint64_t generation = 0;  // counts spawns, so stale poll events are recognised
    bool reported_lost = true;     // no process to report, or reported already
  };

  void send_directly(LocalWorker& w, const Buffer& head, std::span<const std::byte> items);
  void flush(LocalWorker& w);
  void read_results(LocalWorker& w, bool process_ended);
  bool consume_frames(LocalWorker& w);
  void give_up(LocalWorker& w, const std::string& prefix, const std::string& suffix);
  void read_control();
  void handle_control(const ZygoteMessage& m, std::vector<Fd>& fds);
  void maybe_report_lost(LocalWorker& w);

  /// A pair of w's lanes no chunk holds, or kNoLane.
  [[nodiscard]] std::uint32_t free_lane(const LocalWorker& w) const noexcept {
    if (!lanes_.available()) return kNoLane;
    for (std::uint32_t k = 0; k < w.lane_chunk.size(); ++k)
      if (w.lane_chunk[k] == 0) return k;
    return kNoLane;
  }

  /// Chunks of this many bytes or more go to the socket straight from their buffer when nothing is
  /// queued before them: only what the socket does not take at once is copied to w.out.
  static constexpr std::size_t kDirectSendBytes = std::size_t{64} << 10;

  const Settings& settings_;
  Scheduler* scheduler_ = nullptr;
  std::vector<LocalWorker> workers_;
  WorkerSlot* slots_ = nullptr;
  std::size_t slots_bytes_ = 0;
  LaneArea lanes_;
  Fd wake_;
  ZygoteSetup zygote_setup_;
  ZygoteClient zygote_;
  Buffer chunk_head_;     // send's scratch
  int callers_cpu_ = -1;  // the CPU the dispatching thread ran on when the dispatch began
};

}  // namespace procpool::detail

#include "local_transport_impl.hpp"
