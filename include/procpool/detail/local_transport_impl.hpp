// procpool::detail: LocalTransport's larger members (see local_transport.hpp): sending chunks,
// reading results, and the zygote's reports.
#pragma once

#include "local_transport.hpp"

namespace procpool::detail {

// ---- sending ---------------------------------------------------------------------------------

inline void LocalTransport::send(std::size_t index, std::uint64_t id, Chunk& c, const Job& job, bool idle) {
  LocalWorker& w = workers_[index];
  if (w.job_sent != c.job_id) {
    append_job_frame(w.out, c.job_id, job.runner_factory, job.callable.view());
    w.job_sent = c.job_id;
  }
  // The chunk holds a pair of lanes (see LaneArea) until its results are decoded: large items
  // travel in its items lane, and the worker may leave large results in its results lane. Fresh
  // chunks were encoded into the lane already (lend_storage); one sent again is copied there.
  std::span<const std::byte> items = c.items.view();
  std::uint64_t lane_bytes = 0;
  if (c.items.owns_storage()) c.lane = free_lane(w);
  if (c.lane != kNoLane) {
    w.lane_chunk[c.lane] = id;
    const std::span<std::byte> lane = lanes_.items(index, c.lane);
    if (items.size() >= kLaneThresholdBytes && items.size() <= lane.size()) {
      if (items.data() != lane.data()) std::memcpy(lane.data(), items.data(), items.size());
      lane_bytes = items.size();
      items = {};
    }
  }
  Buffer& head = chunk_head_;
  head.clear();
  append_chunk_head(head, id, c.job_id, c.count, c.skip, c.lane, lane_bytes, items.size(), c.flags);
  WorkerSlot& slot = slots_[index];
  const std::size_t frame_bytes = head.size() + items.size();
  // An idle worker with nothing queued gets a small chunk through its mailbox (see WorkerSlot).
  if (idle && w.out.empty() && frame_bytes <= WorkerSlot::kMailboxBytes &&
      slot.mailbox_full.load(std::memory_order_acquire) == 0) {
    std::memcpy(slot.mailbox, head.data(), head.size());
    if (!items.empty()) std::memcpy(slot.mailbox + head.size(), items.data(), items.size());
    slot.mailbox_length = static_cast<std::uint32_t>(frame_bytes);
    slot.mailbox_full.store(1, std::memory_order_seq_cst);
    if (slot.worker_asleep.load(std::memory_order_seq_cst) != 0) append_wake_frame(w.out);
  } else if (w.out.empty() && items.size() >= kDirectSendBytes && w.channel) {
    send_directly(w, head, items);
  } else {
    w.out.append(head.data(), head.size());
    w.out.append(items.data(), items.size());
  }
}

/// Sends head + items straight from their buffers; queues in w.out only what the socket did not take.
inline void LocalTransport::send_directly(LocalWorker& w, const Buffer& head, std::span<const std::byte> items) {
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

inline void LocalTransport::flush(LocalWorker& w) {
  if (!w.channel) return;
  while (w.out_sent < w.out.size()) {
    // MSG_NOSIGNAL: a dead worker's socket gives EPIPE, never a SIGPIPE in the caller.
    const ssize_t n =
        ::send(w.channel.get(), w.out.data() + w.out_sent, w.out.size() - w.out_sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      w.out_sent += static_cast<std::size_t>(n);
      slots_[w.index].to_worker.fetch_add(1, std::memory_order_release);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    // EPIPE: the worker is dead; its death is handled when its socket or pidfd says so.
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
}

// ---- receiving -------------------------------------------------------------------------------

inline void LocalTransport::read_results(LocalWorker& w, bool process_ended) {
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
      give_up(w, "procpool::Pool: the result of ",
              fmt::format(" (worker {}) is too large to fit in the parent's memory ({} bytes received so far)", w.index,
                          w.in.pending()));
      return;
    }
    const ssize_t n = read_some(w.channel.get(), dst, want);
    w.in.commit(want, n > 0 ? static_cast<std::size_t>(n) : 0);
    if (n > 0) {
      if (!consume_frames(w)) return;
      // A short read emptied the socket for now (poll reports what comes next), unless the worker
      // has ended and everything it wrote must be drained now.
      if (static_cast<std::size_t>(n) < want && !process_ended) break;
      continue;
    }
    if (n < 0 && errno == EAGAIN) break;
    eof = true;
    break;
  }
  if (eof || process_ended) {
    // Everything the worker wrote before it ended has been read; its exit status comes from the zygote.
    if (process_ended && !eof && w.channel) consume_frames(w);
    w.channel.reset();
    w.process.close_pidfd();
    maybe_report_lost(w);
  }
}

/// Handles the complete frames received from w; false if w sent garbage (it is then killed).
inline bool LocalTransport::consume_frames(LocalWorker& w) {
  try {
    while (auto frame = w.in.next()) {
      const auto& [h, payload] = *frame;
      switch (h.kind) {
        case FrameKind::ready: scheduler_->ready(w.index); break;
        case FrameKind::init_failed: {
          const RemoteException info = parse_init_failed(h, payload);
          scheduler_->init_failed(w.index, fmt::format("procpool::Pool: the initializer threw {}: {} in worker {}",
                                                       info.type_name, info.what, w.index));
          break;
        }
        case FrameKind::results: {
          std::span<const std::byte> lane;
          for (std::uint32_t k = 0; k < w.lane_chunk.size(); ++k)
            if (w.lane_chunk[k] == h.id) lane = lanes_.results(w.index, k);
          scheduler_->results(w.index, h.id, payload, lane);
          break;
        }
        default: throw DecodeError("unexpected frame kind");
      }
    }
  } catch (const DecodeError& e) {
    // The worker's output is corrupt (its memory, or a task writing to our socket): fail what it
    // had, and replace it.
    give_up(w, fmt::format("procpool::Pool: worker {} sent a malformed message ({}) for ", w.index, e.what()), "");
    return false;
  } catch (const std::bad_alloc&) {
    give_up(w, "procpool::Pool: the result of ",
            fmt::format(" (worker {}) is too large to fit in the parent's memory", w.index));
    return false;
  }
  return true;
}

/// Fails the items w holds, kills it, and reads nothing more from it: its death is handled when
/// the zygote reports its exit.
inline void LocalTransport::give_up(LocalWorker& w, const std::string& prefix, const std::string& suffix) {
  scheduler_->give_up(w.index, prefix, suffix);
  w.in = FrameParser{};
  w.channel.reset();
  w.process.close_pidfd();
  maybe_report_lost(w);
}

// ---- the zygote's reports --------------------------------------------------------------------

inline void LocalTransport::read_control() {
  std::vector<Fd> fds;
  for (;;) {
    bool gone = false;
    const auto m = zygote_.next(fds, gone);
    if (m) {
      handle_control(*m, fds);
      continue;
    }
    if (!gone) return;
    zygote_.lost();
    if (!scheduler_->lifecycle().stopping())
      scheduler_->transport_failed(
          "procpool::Pool: the pool's zygote process ended unexpectedly; the pool cannot replace workers",
          "the pool's zygote process ended unexpectedly");
    for (LocalWorker& lw : workers_) {
      lw.channel.reset();
      lw.process.close_pidfd();
      lw.reported_lost = true;
    }
    return;
  }
}

inline void LocalTransport::handle_control(const ZygoteMessage& m, std::vector<Fd>& fds) {
  switch (m.op) {
    case ZygoteMessage::Op::spawned: {
      if (m.index < 0 || static_cast<std::size_t>(m.index) >= workers_.size()) return;
      LocalWorker& w = workers_[static_cast<std::size_t>(m.index)];
      if (fds.empty()) {
        // The descriptors did not arrive (we are at RLIMIT_NOFILE: the kernel drops them). The
        // worker sees its socket close and exits; try again later.
        scheduler_->spawn_failed(w.index, fmt::format("cannot receive the new worker's socket: {} (the open-file "
                                                      "limit RLIMIT_NOFILE is reached)",
                                                      std::strerror(EMFILE)));
        return;
      }
      w.process = ForeignProcess(m.pid, fds.size() > 1 ? std::move(fds[1]) : Fd());
      w.channel = std::move(fds[0]);
      set_nonblocking(w.channel.get(), true);
      ++w.generation;
      w.in = FrameParser{};
      w.out.clear();
      w.out_sent = 0;
      w.lane_chunk = {};
      w.job_sent = 0;
      w.reported_lost = false;
      scheduler_->started(w.index);
      break;
    }
    case ZygoteMessage::Op::spawn_failed: {
      if (m.index < 0 || static_cast<std::size_t>(m.index) >= workers_.size()) return;
      const char* hint = m.value == EAGAIN   ? " (the process limit RLIMIT_NPROC or the system's pid limit is reached)"
                         : m.value == EMFILE ? " (the open-file limit RLIMIT_NOFILE is reached)"
                                             : "";
      scheduler_->spawn_failed(static_cast<std::size_t>(m.index),
                               fmt::format("the zygote could not create a worker: {}{}", std::strerror(m.value), hint));
      break;
    }
    case ZygoteMessage::Op::exited: {
      for (LocalWorker& w : workers_) {
        if (w.process.pid() == m.pid && !w.process.ended() && !w.reported_lost) {
          w.process.record_status(m.value);
          if (w.channel)
            read_results(w, /*process_ended=*/true);  // drains, then reports the death
          else
            maybe_report_lost(w);
          break;
        }
      }
      break;
    }
    default: break;
  }
}

/// A worker's death is reported once its socket has closed and the zygote has told how it ended:
/// then everything it sent has been read, and the slot says what it was running.
inline void LocalTransport::maybe_report_lost(LocalWorker& w) {
  if (w.channel || !w.process.ended() || w.reported_lost) return;
  w.reported_lost = true;
  scheduler_->lost(w.index, w.process.exitcode().value_or(kExitcodeUnknown), running(w.index));
}

}  // namespace procpool::detail
