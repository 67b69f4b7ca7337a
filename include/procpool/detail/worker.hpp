// procpool::detail: what runs inside a pool worker: its main loop, which reads jobs and chunks from
// the parent and hands them to the job runners (runner.hpp).
#pragma once

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/uio.h>
// After a C library header, which defines __GLIBC__.
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>

#include "../error.hpp"
#include "buffer.hpp"
#include "fd.hpp"
#include "fork.hpp"
#include "lanes.hpp"
#include "remote_exception.hpp"
#include "runner.hpp"
#include "settings.hpp"
#include "spin.hpp"
#include "wire.hpp"

namespace procpool::detail {

/// How a worker was set up by the zygote.
struct WorkerSetup {
  const Settings* settings = nullptr;  // the pool's; null: not pinned, no timeout, no initializer
  int index = 0;
  WorkerSlot* slot = nullptr;
  const struct sigaction* caller_sigchld = nullptr;  // restored before user code runs
  const LaneArea* lanes = nullptr;                   // may be unavailable: then no lanes are offered

  /// The CPU this worker is pinned to, or -1.
  [[nodiscard]] int cpu() const noexcept {
    return settings != nullptr ? settings->cpu_of(static_cast<std::size_t>(index)) : -1;
  }
  /// Whether items are timed (the pool has a task timeout).
  [[nodiscard]] bool timed() const noexcept { return settings != nullptr && settings->timed(); }
  /// How long to watch for the next chunk before sleeping (Settings::worker_spin).
  [[nodiscard]] std::chrono::nanoseconds spin() const noexcept {
    return settings != nullptr ? settings->worker_spin : Settings::kWorkerSpin;
  }
  /// The initializer to run first, or null.
  [[nodiscard]] const std::function<void()>* initializer() const noexcept {
    return settings != nullptr && settings->initializer ? &settings->initializer : nullptr;
  }
};

/// The worker's side of its socket and mailbox: reads what has arrived in large pieces (one
/// system call per message or fewer), and when nothing has arrived watches the parent's write
/// counter and the mailbox in shared memory for a while before it blocks: a cross-core wake-up
/// costs tens of microseconds, and a worker that was just busy usually gets its next message
/// within that time.
class SpinningReader {
 public:
  SpinningReader(int fd, WorkerSlot& slot, std::chrono::nanoseconds spin) : fd_(fd), slot_(slot), spin_(spin) {}

  /// The next frame, from the mailbox or the socket; false at end-of-file (the parent closed the
  /// pool, or is gone). The payload view stays valid until the next call. Throws DecodeError for a
  /// header the parent never sends (check_frame_header), before reading its payload.
  bool next_frame(FrameHeader& h, std::span<const std::byte>& payload) {
    std::span<const std::byte> header_bytes;
    const Got got = next(sizeof h, header_bytes, /*between_frames=*/true);
    if (got == Got::end) return false;
    // Between frames the mailbox comes first. It is looked at after the socket's bytes are in:
    // the parent may fill it and then send a frame, and the mailbox frame is then the older one
    // (it is used only when the worker has answered everything sent before), so a header just
    // read goes back.
    if (slot_.mailbox_full.load(std::memory_order_acquire) != 0) {
      if (got == Got::bytes) pos_ -= sizeof h;
      take_mailbox(h, payload);
      return true;
    }
    std::memcpy(&h, header_bytes.data(), sizeof h);
    check_frame_header(h, Sender::parent);
    return next(static_cast<std::size_t>(h.length), payload, /*between_frames=*/false) == Got::bytes;
  }

 private:
  enum class Got { bytes, mailbox, end };

  void take_mailbox(FrameHeader& h, std::span<const std::byte>& payload) {
    // Copied out so that the mailbox is free again before the work starts.
    const std::size_t length = std::min<std::size_t>(slot_.mailbox_length, WorkerSlot::kMailboxBytes);
    boxed_.clear();
    boxed_.append(slot_.mailbox, length);
    slot_.mailbox_full.store(0, std::memory_order_release);
    if (length < sizeof h) {
      h = FrameHeader{FrameKind::wake, 0, 0, 0};  // never sent by the parent; ignored
      payload = {};
      return;
    }
    std::memcpy(&h, boxed_.data(), sizeof h);
    check_frame_header(h, Sender::parent);
    payload = std::span<const std::byte>(boxed_.data() + sizeof h,
                                         std::min<std::size_t>(static_cast<std::size_t>(h.length), length - sizeof h));
  }

  /// The next n bytes of the socket. Between frames, a frame arriving in the mailbox meanwhile
  /// interrupts the wait (Got::mailbox).
  Got next(std::size_t n, std::span<const std::byte>& out, bool between_frames) {
    while (buf_.size() - pos_ < n) {
      if (pos_ > 0) {
        buf_.erase_front(pos_);
        pos_ = 0;
      }
      const std::size_t want = std::max<std::size_t>(n - buf_.size(), std::size_t{64} << 10);
      const std::atomic<std::uint32_t>* box = between_frames ? &slot_.mailbox_full : nullptr;
      if (drained_at_ && slot_.to_worker.load(std::memory_order_acquire) == *drained_at_ &&
          !spin_until_changed(slot_.to_worker, *drained_at_, spin_, box)) {
        // Going to sleep: announce it, then look at the mailbox once more. The parent stores into
        // the mailbox and then reads worker_asleep (sending a wake frame if set); both orders are
        // sequentially consistent, so either it sees us asleep or we see its frame.
        slot_.worker_asleep.store(1, std::memory_order_seq_cst);
        if (box == nullptr || box->load(std::memory_order_seq_cst) == 0) {
          pollfd p{fd_, POLLIN, 0};
          poll_retry(&p, 1, -1);
        }
        slot_.worker_asleep.store(0, std::memory_order_seq_cst);
      }
      if (box != nullptr && box->load(std::memory_order_acquire) != 0) return Got::mailbox;
      // Loaded before the read: if the read finds the socket empty, anything the parent sends
      // later moves the counter past this value.
      const std::uint64_t seen = slot_.to_worker.load(std::memory_order_acquire);
      std::byte* dst = buf_.grow(want);
      const ssize_t r = read_some(fd_, dst, want);
      buf_.resize(buf_.size() - want + (r > 0 ? static_cast<std::size_t>(r) : 0));
      if (r == 0) return Got::end;
      if (r < 0 && errno != EAGAIN) return Got::end;
      drained_at_.reset();
      if (r < 0 || static_cast<std::size_t>(r) < want) drained_at_ = seen;
    }
    out = std::span<const std::byte>(buf_.data() + pos_, n);
    pos_ += n;
    return Got::bytes;
  }

  int fd_;
  WorkerSlot& slot_;
  std::chrono::nanoseconds spin_;
  Buffer buf_;
  std::size_t pos_ = 0;
  std::optional<std::uint64_t> drained_at_;  // the counter's value when the socket was last found empty
  Buffer boxed_;                             // the last frame taken from the mailbox
};

inline void send_frame_or_exit(int fd, const Buffer& frame, WorkerSlot& slot) {
  // Blocking write: the parent always drains results, so this cannot deadlock; if the parent is
  // gone the write fails (EPIPE, or SIGPIPE) and the worker ends, which is what it should do.
  if (write_all(fd, frame.data(), frame.size()) != 0) exit_child(worker_exit_code(WorkerExit::finished));
  slot.to_parent.fetch_add(1, std::memory_order_release);
}

/// The worker's main loop: run the initializer, then jobs and chunks until shutdown or end-of-file.
/// `channel` is the worker's end of a stream socket: tasks come in, results go out.
inline int worker_main(int channel, const WorkerSetup& setup) {
  const int result_fd = channel;
  if (const int cpu = setup.cpu(); cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    // A cpuset that changed since the pool started may forbid the CPU: then run unpinned.
    (void)::sched_setaffinity(0, sizeof set, &set);
  }
  set_nonblocking(channel, true);  // reads spin before they block; write_all waits out EAGAIN
#if defined(__GLIBC__)
  // A worker decodes, runs and encodes item after item of much the same sizes. glibc hands
  // blocks over 128 KiB to mmap and trims freed memory at the heap's top, so each megabyte-sized
  // item would be faulted in afresh, page by page (several microseconds a page in a VM), and
  // given back. Workers keep up to 128 MiB of freed memory for the next item instead. (The
  // caller's process is left alone; an initializer may set its own values.) Called through its
  // address, which the dynamic linker resolved when the program started: a first call through
  // the lazily bound PLT entry would look the symbol up in every library (see bind_child_functions).
  int (*volatile set_malloc_option)(int, int) = &::mallopt;
  (void)set_malloc_option(M_MMAP_THRESHOLD, 32 << 20);
  (void)set_malloc_option(M_TRIM_THRESHOLD, 128 << 20);
#endif
  if (setup.caller_sigchld != nullptr) ::sigaction(SIGCHLD, setup.caller_sigchld, nullptr);

  inside_pool_worker() = true;
  Buffer frame;
  if (const std::function<void()>* initializer = setup.initializer()) {
    try {
      (*initializer)();
    } catch (...) {
      append_init_failed_frame(frame, describe_current_exception());
      send_frame_or_exit(result_fd, frame, *setup.slot);
      return worker_exit_code(WorkerExit::initializer_failed);
    }
  }
  setup.slot->initialized.store(1, std::memory_order_release);
  append_ready_frame(frame);
  send_frame_or_exit(result_fd, frame, *setup.slot);

  std::unique_ptr<JobRunner> runner;
  std::uint64_t runner_job = 0;
  SpinningReader reader(channel, *setup.slot, setup.spin());
  std::span<const std::byte> payload;
  Buffer values;
  Buffer failures;
  for (;;) {
    // Read and check the frame first; only then act on it. A frame that does not parse is the
    // parent's fault (it never sends one): the worker ends, and the parent sees why from its exit.
    // (Exceptions from what the frame asks for, such as rebuilding a callable, are not caught here.)
    FrameHeader h;
    ParsedJob job;
    ParsedChunk chunk;
    try {
      if (!reader.next_frame(h, payload)) return worker_exit_code(WorkerExit::finished);
      if (h.kind == FrameKind::chunk) {
        chunk = parse_chunk(h, payload);
      } else if (h.kind == FrameKind::job) {
        job = parse_job(h, payload);
      }
    } catch (const DecodeError&) {
      return worker_exit_code(WorkerExit::protocol_error);
    }
    switch (h.kind) {
      case FrameKind::shutdown: return worker_exit_code(WorkerExit::finished);
      case FrameKind::wake: break;
      case FrameKind::job: {
        const auto factory = reinterpret_cast<RunnerFactory>(job.runner_factory);
        runner.reset();
        runner = factory(job.callable);
        runner_job = job.job_id;
        break;
      }
      case FrameKind::chunk: {
        if (!runner || chunk.job_id != runner_job) return worker_exit_code(WorkerExit::protocol_error);
        std::span<const std::byte> items = chunk.items;
        // The results are encoded straight into the chunk's results lane, when it holds one: if
        // they are large, the parent decodes them from there.
        std::span<std::byte> results_lane;
        if (chunk.lane != kNoLane && setup.lanes != nullptr && setup.lanes->available()) {
          const auto index = static_cast<std::size_t>(setup.index);
          if (chunk.lane_bytes > 0) {
            const std::span<std::byte> lane = setup.lanes->items(index, chunk.lane);
            if (chunk.lane_bytes > lane.size()) return worker_exit_code(WorkerExit::protocol_error);
            items = lane.first(static_cast<std::size_t>(chunk.lane_bytes));
          }
          results_lane = setup.lanes->results(index, chunk.lane);
        } else if (chunk.lane_bytes > 0) {
          return worker_exit_code(WorkerExit::protocol_error);  // items in lanes this worker does not have
        }
        const std::uint32_t flags = chunk.flags | (setup.timed() ? std::uint32_t{kChunkTimed} : 0);
        ChunkWork work{items, chunk.count, chunk.skip.bytes(), setup.slot, h.id, flags};
        if (results_lane.empty()) {
          // A buffer still over an earlier chunk's lane must not write there any more.
          if (values.owns_storage()) {
            values.clear();
          } else {
            values = Buffer();
          }
        } else {
          values = Buffer::over(results_lane.data(), results_lane.size());
        }
        failures.clear();
        ChunkOutput out{values, failures};
        const std::int64_t t0 = monotonic_ns();
        setup.slot->item.store(0, std::memory_order_relaxed);
        // A fresh start time before the chunk id: the parent must never pair this chunk with the
        // previous item's start and kill the worker for a timeout it did not have.
        if (work.timed()) setup.slot->item_started_ns.store(t0, std::memory_order_relaxed);
        setup.slot->chunk_id.store(h.id, std::memory_order_release);
        runner->run_chunk(work, out);
        // Cleared before the results are written: a death from here on loses no item's outcome
        // to blame, so the parent re-runs the chunk instead of accusing an item.
        setup.slot->chunk_id.store(0, std::memory_order_release);
        const bool values_in_lane = !values.owns_storage() && values.size() >= kLaneThresholdBytes;
        // Values not left in the lane go out straight from their buffer (writev), not copied
        // behind the head.
        const std::size_t inline_values = values_in_lane ? 0 : values.size();
        frame.clear();
        append_results_head(frame, h.id, chunk.count, out.failed_count, failures.view(),
                            static_cast<std::uint64_t>(monotonic_ns() - t0), values_in_lane ? values.size() : 0,
                            inline_values, out.answered);
        iovec parts[2] = {{frame.data(), frame.size()}, {values.data(), inline_values}};
        if (writev_all(result_fd, parts, inline_values > 0 ? 2 : 1) != 0)
          exit_child(worker_exit_code(WorkerExit::finished));  // the parent is gone
        setup.slot->to_parent.fetch_add(1, std::memory_order_release);
        break;
      }
      default: return worker_exit_code(WorkerExit::protocol_error);  // check_frame_header let no other kind through
    }
  }
}

}  // namespace procpool::detail
