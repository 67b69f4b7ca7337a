// procpool::detail: the Scheduler's larger members (see scheduler.hpp): handing out chunks,
// taking results in, and failures: blame, re-queueing, failing what cannot run.
#pragma once

#include "messages.hpp"
#include "remote_exception.hpp"
#include "scheduler.hpp"
#include "wire.hpp"

namespace procpool::detail {

// ---- handing out work ------------------------------------------------------------------------

/// A worker takes a chunk when it has none; a second one waits behind the first only when the
/// first is known to be short. The second chunk hides the round trip between two chunks, which
/// matters only for short ones; behind a long (or not yet measured) chunk it would hold items that
/// an idle worker could be running.
inline bool Scheduler::accepting(std::size_t w) const {
  const WorkerRecord& r = workers_[w];
  if (r.state != WorkerState::running || r.retiring) return false;
  if (r.in_flight.empty()) return true;
  if (r.in_flight.size() >= 2) return false;
  const std::uint64_t front = r.in_flight.front();
  const std::optional<double> expected = expected_ns(front);
  if (expected.value_or(kPrefetchNs) >= kPrefetchNs) return false;
  // A chunk that has already run well past what it was expected to take is held up by a slow
  // item: nothing more waits behind it.
  const auto sent = chunks_.find(front);
  return sent == chunks_.end() || static_cast<double>(now_ - sent->second.sent_ns) < 2 * *expected + kPrefetchNs;
}

/// How long chunk `id` is expected to take, once its job's cost per item is measured.
inline std::optional<double> Scheduler::expected_ns(std::uint64_t id) const {
  const auto c = chunks_.find(id);
  if (c == chunks_.end()) return std::nullopt;
  const Job* job = jobs_.find(c->second.job_id);
  if (job == nullptr || job->ns_per_item == 0) return std::nullopt;
  return job->ns_per_item * static_cast<double>(c->second.count);
}

/// A chunk that failed on a dead worker goes first; otherwise a new chunk from the oldest batch with
/// items left, topped up from later batches of the same job.
inline std::optional<std::uint64_t> Scheduler::next_chunk_for(std::size_t w) {
  if (!requeued_.empty()) {
    // A worker with a max_tasks_per_worker allowance takes only a chunk that fits what it has
    // left; a fresh worker always can (chunks are never cut larger than the allowance).
    const std::size_t allowance =
        settings_.max_tasks_per_worker > 0 ? settings_.max_tasks_per_worker - workers_[w].items_assigned : SIZE_MAX;
    const auto fits = std::find_if(requeued_.begin(), requeued_.end(),
                                   [&](std::uint64_t id) { return chunks_.at(id).open_items() <= allowance; });
    if (fits != requeued_.end()) {
      const std::uint64_t id = *fits;
      requeued_.erase(fits);
      return id;
    }
    // None fits: the worker takes new items up to its allowance (below), or, if there are none,
    // retires, and its replacement takes the chunk.
  }
  Chunk c;
  // Items are encoded straight into memory the transport lends for w (a lane), when it does;
  // otherwise into a buffer of a finished chunk.
  transport_.lend_storage(w, c);
  if (c.lane == kNoLane && !spare_item_buffers_.empty()) {
    c.items = std::move(spare_item_buffers_.back());
    spare_item_buffers_.pop_back();
  }
  std::size_t want = 0;
  for (const auto& b : batches_) {
    if (b->source_done_) continue;
    if (c.count > 0 && b->job_id_ != c.job_id) continue;
    const std::size_t room = b->room();
    if (room == 0) continue;
    if (c.count == 0) {
      c.job_id = b->job_id_;
      want = chunk_size_for(*b);
      if (settings_.max_tasks_per_worker > 0)
        want = std::min(want, settings_.max_tasks_per_worker - workers_[w].items_assigned);
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
      // The caller's input range or an item's serialize threw: that call fails with it, and none
      // of its items (not even those encoded before the throw) go out in this chunk.
      c.items.resize(mark);
      fail_batch(*b, std::current_exception());
      continue;
    }
    if (got > 0) {
      c.segments.push_back({b, b->dispatched_, static_cast<std::uint32_t>(got)});
      c.count += static_cast<std::uint32_t>(got);
      b->dispatched_ += got;
      if (b->total_known_) jobs_.at(b->job_id_).undispatched -= got;
    }
    // A short chunk may only mean the byte limit was reached; the input is over when nothing more
    // came, or when a sized input has been fully dispatched.
    if ((got == 0 && take > 0) || (b->total_known_ && b->dispatched_ >= b->total_)) {
      if (!b->total_known_) {
        b->total_ = b->dispatched_;
        b->total_known_ = true;
      }
      b->source_done_ = true;
      if (b->finished()) jobs_.release(b->job_id_);
    }
    if (c.count >= want || c.items.size() >= kMaxChunkBytes) break;
  }
  if (c.count == 0) {
    if (c.lane != kNoLane) transport_.release(w, 0, c);
    if (!requeued_.empty() && settings_.max_tasks_per_worker > 0) {
      workers_[w].retiring = true;
      if (workers_[w].in_flight.empty()) retire(w);
    }
    return std::nullopt;
  }
  const std::uint64_t id = next_chunk_id_++;
  chunks_.emplace(id, std::move(c));
  return id;
}

/// Automatic chunking: about a millisecond of work per chunk, measured from earlier chunks of the
/// same job, but never so large that the tail of a known-size input cannot be balanced.
inline std::size_t Scheduler::chunk_size_for(const Batch& b) const {
  if (b.chunk_size_ > 0) return b.chunk_size_;
  if (settings_.chunk_size > 0) return settings_.chunk_size;
  const Job* job = jobs_.find(b.job_id_);
  const double ns = job != nullptr ? job->ns_per_item : 0;
  std::size_t n = ns > 0 ? static_cast<std::size_t>(std::clamp(kTargetChunkNs / ns, 1.0, 1e6)) : 4;
  if (b.total_known_ && job != nullptr)
    n = std::min(n, std::max<std::size_t>(1, job->undispatched / (2 * workers_.size())));
  return std::max<std::size_t>(n, 1);
}

inline void Scheduler::send(std::size_t w, std::uint64_t id) {
  WorkerRecord& r = workers_[w];
  Chunk& c = chunks_.at(id);
  c.sent_skip = c.skip;
  c.flags = chunk_limit_ns(c) > 0 ? std::uint32_t{kChunkTimed} : 0;
  for (const Segment& seg : c.segments)
    if (seg.batch->cancellable()) c.flags |= kChunkExactStop;
  transport_.send(w, id, c, jobs_.at(c.job_id), r.in_flight.empty());
  c.sent_ns = now_;
  r.in_flight.push_back(id);
  r.items_assigned += c.open_items();
  if (settings_.max_tasks_per_worker > 0 && r.items_assigned >= settings_.max_tasks_per_worker) r.retiring = true;
}

/// Recycled (max_tasks_per_worker), or the pool stops: asked to exit; replaced when it is gone.
inline void Scheduler::retire(std::size_t w) {
  if (workers_[w].state != WorkerState::running) return;
  workers_[w].state = WorkerState::leaving;
  transport_.retire(w);
}

inline void Scheduler::kill(std::size_t w) {
  const WorkerState s = workers_[w].state;
  if (s == WorkerState::running || s == WorkerState::leaving) transport_.kill(w);
}

// ---- the caller's code, run for its batches --------------------------------------------------

/// Counts outcomes into a batch; a batch that is done drops its use of the job.
inline void Scheduler::completed(Batch& b, std::size_t n) {
  b.completed_ += n;
  if (b.finished()) jobs_.release(b.job_id_);
}

/// Stops dispatching a batch: what is out finishes, nothing more of its input is read.
inline void Scheduler::stop_dispatch(Batch& b) {
  if (b.source_done_) return;
  if (b.total_known_) jobs_.at(b.job_id_).undispatched -= b.total_ - b.dispatched_;
  b.source_done_ = true;
  b.total_ = b.dispatched_;
  b.total_known_ = true;
  if (b.finished()) jobs_.release(b.job_id_);
}

/// The caller's own code threw while the pool ran it for batch b: that call fails with the
/// exception, whichever thread was driving, and the pool goes on with the other calls.
inline void Scheduler::fail_batch(Batch& b, std::exception_ptr error) {
  if (!b.caller_error_) b.caller_error_ = std::move(error);
  stop_dispatch(b);
}

inline void Scheduler::cut_stream(Batch& b, const std::string& why) {
  if (!b.cut_reason_)
    b.cut_reason_ = fmt::format(
        "procpool::Pool: this imap stopped after its first {} items; the rest of its input did not run because {}. "
        "Keep the Pool alive until the iteration is over",
        b.dispatched_, why);
  stop_dispatch(b);
}

/// Calls b's progress callback, if its caller still waits; an exception from it fails b's call.
inline void Scheduler::report_progress(Batch& b) {
  if (b.forgotten_ || b.caller_error_) return;
  const void* const outer = callback_running_for();
  callback_running_for() = this;
  try {
    b.on_progress();
  } catch (...) {
    fail_batch(b, std::current_exception());
  }
  callback_running_for() = outer;
}

// ---- results ---------------------------------------------------------------------------------

inline void Scheduler::results(std::size_t w, std::uint64_t id, std::span<const std::byte> payload,
                               std::span<const std::byte> lane) {
  WorkerRecord& r = workers_[w];
  if (r.in_flight.empty() || r.in_flight.front() != id) throw DecodeError("results for a chunk not in flight");
  if (r.withdrawn_chunk == id) r.withdrawn_chunk = 0;
  Chunk& c = chunks_.at(id);
  const ParsedResults parsed = parse_results(payload, c.count, lane);
  const auto& failed = parsed.failed;
  const Segment& only = c.segments.front();
  const std::uint32_t answered = parsed.header.answered;
  for (const Segment& seg : c.segments) seg.batch->note_results(seg.count, parsed.values.size() * seg.count / c.count);
  // A value whose decoding threw in the caller's own code (a serialize that validates): that item
  // fails with the exception. Where the next value starts is then unknown, so the items after it
  // run again (see answered_part).
  std::optional<std::uint32_t> resume_from;
  if (!(answered == c.count && failed.empty() && c.skip.empty() && c.sent_skip.empty() && c.segments.size() == 1 &&
        only.batch->accept_bulk(only.first, only.count, parsed.values))) {
    Decoder values(parsed.values);
    std::size_t f = 0;
    c.for_each_sent_item([&](std::uint32_t local, Batch& b, std::size_t index, bool has_outcome) {
      if (resume_from || local >= answered) return;
      if (f < failed.size() && failed[f].first == local) {
        if (!has_outcome) b.accept_error(index, transport_.item_error(w, failed[f].second, b.describe(index), index));
        ++f;
      } else if (has_outcome) {
        // Its call was stopped while it was out: the value is read past and dropped.
        b.discard_value(values);
      } else {
        try {
          b.accept_value(index, values);
        } catch (const DecodeError&) {
          throw;  // malformed bytes: the worker is at fault
        } catch (const std::bad_alloc&) {
          throw;
        } catch (...) {
          b.accept_error(index, std::current_exception());
          resume_from = local + 1;
        }
      }
      // Should a later item's bytes be corrupt, this one keeps the outcome it already has.
      c.delivered = local + 1;
    });
    if (!resume_from && values.remaining() != 0) throw DecodeError("trailing bytes after the results");
  }
  if (resume_from || answered < c.count) {
    answered_part(w, id, resume_from.value_or(answered));
    return;
  }
  jobs_.record_cost(c.job_id, parsed.header.compute_ns, c.count - c.sent_skip.size());
  // Decoded: memory lent for it may now serve another chunk.
  transport_.release(w, id, c);
  r.in_flight.pop_front();
  finish_chunk(id);
  if (r.retiring && r.in_flight.empty()) retire(w);
}

/// Items [0, answered) of chunk `id`, which w answered, have their outcomes; the chunk's later
/// items run again (on whichever worker is free first): they were withdrawn before they started,
/// or their values could not be located.
inline void Scheduler::answered_part(std::size_t w, std::uint64_t id, std::uint32_t answered) {
  Chunk& c = chunks_.at(id);
  std::vector<std::uint32_t> done;
  c.for_each_open_item([&](std::uint32_t local, Batch& b, std::size_t) {
    if (local >= answered) return;
    done.push_back(local);
    completed(b, 1);
    report_progress(b);
  });
  std::vector<std::uint32_t> skip;
  std::merge(c.skip.begin(), c.skip.end(), done.begin(), done.end(), std::back_inserter(skip));
  c.skip = std::move(skip);
  c.delivered = 0;
  workers_[w].in_flight.pop_front();
  if (c.open_items() == 0) {
    transport_.release(w, id, c);
    chunks_.erase(id);
  } else {
    requeue_from(w, id);
  }
  if (workers_[w].retiring && workers_[w].in_flight.empty()) retire(w);
}

/// Chunk `id` leaves w to run again, first in line: its items move out of memory w's transport
/// lent (which w, or its replacement, will receive other chunks through).
inline void Scheduler::requeue_from(std::size_t w, std::uint64_t id) {
  Chunk& c = chunks_.at(id);
  c.own_items();
  transport_.release(w, id, c);
  c.lane = kNoLane;
  requeued_.push_front(id);
}

/// Counts a chunk's items that had no outcome before into their batches, reports progress, and
/// forgets the chunk.
inline void Scheduler::finish_chunk(std::uint64_t id) {
  const auto it = chunks_.find(id);
  if (it == chunks_.end()) return;
  Chunk c = std::move(it->second);
  chunks_.erase(it);
  std::size_t spare_bytes = c.items.capacity();
  for (const Buffer& b : spare_item_buffers_) spare_bytes += b.capacity();
  if (c.items.owns_storage() && spare_item_buffers_.size() < std::max(kSpareItemBuffers, 2 * workers_.size()) &&
      spare_bytes <= kMaxSpareBytes) {
    c.items.clear();
    spare_item_buffers_.push_back(std::move(c.items));
  }
  std::size_t s = 0;
  std::uint32_t local = 0;
  for (const Segment& seg : c.segments) {
    std::size_t fresh = 0;
    for (std::uint32_t k = 0; k < seg.count; ++k, ++local) {
      if (s < c.skip.size() && c.skip[s] == local)
        ++s;
      else
        ++fresh;
    }
    completed(*seg.batch, fresh);
    report_progress(*seg.batch);
  }
}

// ---- failures --------------------------------------------------------------------------------

inline void Scheduler::give_up(std::size_t w, const std::string& prefix, const std::string& suffix) {
  WorkerRecord& r = workers_[w];
  for (const std::uint64_t id : r.in_flight) {
    if (const auto it = chunks_.find(id); it != chunks_.end()) transport_.release(w, id, it->second);
    fail_chunk(id, prefix, suffix);
  }
  r.in_flight.clear();
  kill(w);
  // It gets no more work; its death is handled when it is reported lost.
  if (r.state == WorkerState::running) r.state = WorkerState::leaving;
}

inline void Scheduler::lost(std::size_t w, int exitcode, RunningItem at_death) {
  WorkerRecord& r = workers_[w];
  if (r.state == WorkerState::vacant || r.state == WorkerState::starting) return;
  const std::string who = transport_.describe(w);
  // An initializer that throws breaks the pool for good; one that dies might have been killed from
  // outside, so only three deaths in a row before it finishes count as broken.
  r.init_deaths = r.ready ? 0 : r.init_deaths + 1;
  if (r.init_timed_out) {
    lifecycle_.break_with(initializer_timeout_message(kWho, settings_.task_timeout, who));
  } else if (r.init_failure || r.init_deaths >= 3) {
    lifecycle_.break_with(r.init_failure ? *r.init_failure : initializer_deaths_message(kWho, who, exitcode));
  }
  bool first = true;
  std::deque<std::uint64_t> again;
  for (const std::uint64_t id : r.in_flight) {
    const auto it = chunks_.find(id);
    if (it == chunks_.end()) continue;
    Chunk& c = it->second;
    if (first && r.timed_out) {
      // Killed for the task timeout: the item that outran it is to blame, even if it had finished
      // (and the next one started) by the time the kill landed; if its chunk was answered
      // meanwhile, nobody is, and the chunk at hand simply runs again.
      if (r.timed_out->chunk == id && r.timed_out->item < c.count) blame(w, c, *r.timed_out, exitcode);
    } else if (first && r.stopped_for_abort) {
      // Killed to stop a call's running item, which has its outcome: nobody is to blame (the kill
      // may have landed after the worker moved on to another call's item), and the rest runs again.
    } else if (first && at_death.chunk == id && at_death.item < c.count) {
      blame(w, c, at_death, exitcode);
    } else if (first && ++c.unexplained_deaths >= 3) {
      // The worker died outside any item (killed while idle, or while writing results): the chunk
      // is run again, a bounded number of times.
      transport_.release(w, id, c);
      fail_chunk(id, chunk_deaths_prefix(kWho, who, exitcode));
      first = false;
      continue;
    }
    first = false;
    if (c.open_items() == 0) {
      transport_.release(w, id, c);
      chunks_.erase(id);
    } else {
      c.own_items();
      transport_.release(w, id, c);
      c.lane = kNoLane;
      again.push_back(id);
    }
  }
  r.in_flight.clear();
  for (auto it = again.rbegin(); it != again.rend(); ++it) requeued_.push_front(*it);
  r.state = WorkerState::vacant;
  if (lifecycle_.broken()) {
    fail_pending(*lifecycle_.broken_reason());
    return;
  }
  if (!lifecycle_.replaces_workers()) return;
  request_worker(w);
  if (lifecycle_.phase() != Phase::starting) fail_all_if_no_workers();
}

/// Fails the item w was running when it died: with TimeoutError if the scheduler killed it for
/// that, else with ProcessError saying how it ended.
inline void Scheduler::blame(std::size_t w, Chunk& c, const RunningItem& at, int exitcode) {
  if (c.skipped(at.item)) return;  // its call was stopped: it has its outcome
  Batch* owner = nullptr;
  std::size_t index = 0;
  c.for_each_item([&](std::uint32_t local, Batch& b, std::size_t i) {
    if (local == at.item) {
      owner = &b;
      index = i;
    }
  });
  const WorkerRecord& r = workers_[w];
  const std::string who = transport_.describe(w);
  std::exception_ptr error;
  if (r.timed_out && r.timed_out->chunk == at.chunk && r.timed_out->item == at.item) {
    error = std::make_exception_ptr(
        TimeoutError(task_timeout_message(kWho, owner->describe(index), r.timed_out_limit, who), index));
  } else {
    error = std::make_exception_ptr(
        ProcessError(worker_ended_message(kWho, who, exitcode, owner->describe(index)), exitcode, index));
  }
  owner->accept_error(index, error);
  c.add_skip(at.item);
  completed(*owner, 1);
  report_progress(*owner);
}

/// Fails every item of chunk `id` that has no outcome yet, with `prefix` + "item N" + `suffix`.
inline void Scheduler::fail_chunk(std::uint64_t id, const std::string& prefix, const std::string& suffix) {
  const auto it = chunks_.find(id);
  if (it == chunks_.end()) return;
  const Chunk& c = it->second;
  c.for_each_open_item([&](std::uint32_t local, Batch& b, std::size_t index) {
    if (local < c.delivered) return;
    b.accept_error(index, std::make_exception_ptr(Error(fmt::format("{}{}{}", prefix, b.describe(index), suffix))));
  });
  finish_chunk(id);
}

/// Fails everything not yet finished: chunks out and items not yet dispatched.
inline void Scheduler::fail_pending(const std::string& why) {
  for (std::size_t w = 0; w < workers_.size(); ++w) {
    for (const std::uint64_t id : workers_[w].in_flight)
      if (const auto it = chunks_.find(id); it != chunks_.end()) transport_.release(w, id, it->second);
    workers_[w].in_flight.clear();
  }
  requeued_.clear();
  std::vector<std::uint64_t> ids;
  ids.reserve(chunks_.size());
  for (const auto& [id, c] : chunks_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (const std::uint64_t id : ids) fail_chunk(id, "procpool::Pool: ", fmt::format(" did not complete: {}", why));
  fail_undispatched(why);
}

/// Fails the items no chunk holds yet, by index: the caller's input is not read for it (it may be
/// long, endless, or throw). A stream is cut off instead (its iteration ends with the reason).
inline void Scheduler::fail_undispatched(const std::string& why) {
  for (const auto& b : batches_) {
    if (b->source_done_) continue;
    if (b->streaming() || !b->total_known_) {
      cut_stream(*b, why);
      continue;
    }
    const std::size_t n = b->total_ - b->dispatched_;
    for (std::size_t i = b->dispatched_; i < b->total_; ++i)
      b->accept_error(
          i, std::make_exception_ptr(Error(fmt::format("procpool::Pool: {} did not run: {}", b->describe(i), why))));
    jobs_.at(b->job_id_).undispatched -= n;
    b->dispatched_ = b->total_;
    b->source_done_ = true;
    completed(*b, n);
    report_progress(*b);
  }
}

inline void Scheduler::fail_all_if_no_workers() {
  const bool any = std::any_of(workers_.begin(), workers_.end(), [](const WorkerRecord& r) {
    return r.state == WorkerState::running || r.state == WorkerState::starting;
  });
  if (!any) fail_pending(fmt::format("no worker could be started ({})", spawn_error_));
}

// ---- stopping a call: cancel and deadlines ---------------------------------------------------

inline Batch* Scheduler::batch_of(const Chunk& c, std::uint32_t local, std::size_t* index) const {
  std::uint32_t first = 0;
  for (const Segment& seg : c.segments) {
    if (local < first + seg.count) {
      if (index != nullptr) *index = seg.first + (local - first);
      return seg.batch.get();
    }
    first += seg.count;
  }
  return nullptr;
}

/// The time limit of the item a worker runs: its call's task_timeout, else the pool's; 0: none.
inline std::int64_t Scheduler::item_limit_ns(const RunningItem& at) const {
  const auto c = chunks_.find(at.chunk);
  if (c == chunks_.end()) return settings_.task_timeout.count();
  const Batch* b = batch_of(c->second, at.item);
  return b != nullptr ? batch_limit_ns(*b) : settings_.task_timeout.count();
}

/// The shortest time limit of a chunk's items; 0: none.
inline std::int64_t Scheduler::chunk_limit_ns(const Chunk& c) const {
  std::int64_t limit = 0;
  for (const Segment& seg : c.segments)
    if (const std::int64_t l = batch_limit_ns(*seg.batch); l > 0) limit = limit == 0 ? l : std::min(limit, l);
  return limit;
}

inline std::exception_ptr Scheduler::abort_error(const Batch& b, std::size_t index) const {
  if (b.aborted_ == Abort::cancelled)
    return std::make_exception_ptr(CancelledError(cancelled_message(kWho, b.describe(index))));
  return std::make_exception_ptr(TimeoutError(deadline_message(kWho, b.describe(index), b.timeout_), index));
}

inline bool Scheduler::abort(Batch& b, Abort why) {
  if (b.settled()) return false;
  b.aborted_ = why;
  std::size_t stopped_items = 0;
  // Items out in chunks: they get their outcome now; the chunks learn they need not run them.
  std::vector<std::uint64_t> ids;
  for (const auto& [id, c] : chunks_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  std::unordered_map<std::uint64_t, std::size_t> holder;  // chunk id -> the worker it is out on
  for (std::size_t w = 0; w < workers_.size(); ++w)
    for (const std::uint64_t id : workers_[w].in_flight) holder[id] = w;
  for (const std::uint64_t id : ids) {
    Chunk& c = chunks_.at(id);
    std::vector<std::uint32_t> stopped;
    c.for_each_open_item([&](std::uint32_t local, Batch& owner, std::size_t index) {
      if (&owner != &b) return;
      owner.accept_error(index, abort_error(b, index));
      stopped.push_back(local);
    });
    if (stopped.empty()) continue;
    for (const std::uint32_t local : stopped) c.add_skip(local);
    stopped_items += stopped.size();
    if (const auto h = holder.find(id); h != holder.end()) {
      stop_in_flight(h->second, id, stopped);
    } else if (c.open_items() == 0) {
      std::erase(requeued_, id);
      chunks_.erase(id);
    }
  }
  completed(b, stopped_items);
  // Items not dispatched yet: they fail by index, and the input is not read for them. A stream is
  // cut where it is (it may be endless); its iteration ends with the reason.
  if (!b.source_done_) {
    if (b.streaming() || !b.total_known_) {
      b.cut_reason_ =
          b.aborted_ == Abort::cancelled
              ? fmt::format("procpool::Pool: this call was cancelled after its first {} items", b.dispatched_)
              : fmt::format("procpool::Pool: this call's timeout of {} passed after its first {} items "
                            "had been dispatched; the rest of its input did not run",
                            describe_duration(b.timeout_), b.dispatched_);
      stop_dispatch(b);
    } else {
      const std::size_t n = b.total_ - b.dispatched_;
      for (std::size_t i = b.dispatched_; i < b.total_; ++i) b.accept_error(i, abort_error(b, i));
      jobs_.at(b.job_id_).undispatched -= n;
      b.dispatched_ = b.total_;
      b.source_done_ = true;
      completed(b, n);
    }
  }
  report_progress(b);
  return true;
}

/// Items `stopped` of chunk `id`, out on w, have their outcomes: w must not start them. If it runs
/// one of them now, it is killed (and replaced); otherwise they are withdrawn, and should w start
/// one before it sees the withdrawal (the transport tells), it is killed after all.
inline void Scheduler::stop_in_flight(std::size_t w, std::uint64_t id, const std::vector<std::uint32_t>& stopped) {
  WorkerRecord& r = workers_[w];
  if ((r.state != WorkerState::running && r.state != WorkerState::leaving) || r.stopped_for_abort) return;
  const auto running_one_of_them = [&](const RunningItem& at) {
    return at.chunk == id && std::binary_search(stopped.begin(), stopped.end(), at.item);
  };
  RunningItem at = transport_.running(w);
  if (!running_one_of_them(at)) {
    // The first stopped item it has not started yet: nothing from there on starts. (A chunk's items
    // after that which belong to other calls run again elsewhere.)
    const std::uint32_t from_item = at.chunk == id ? at.item + 1 : 0;
    const auto first = std::lower_bound(stopped.begin(), stopped.end(), from_item);
    if (first == stopped.end()) return;  // they all ran already: their values are dropped
    // One withdrawal at a time per worker: the earlier chunk keeps it (items of a later one that
    // start before its turn just run, and their values are dropped).
    if (r.withdrawn_chunk != 0 && r.withdrawn_chunk < id) return;
    const std::uint32_t from = r.withdrawn_chunk == id ? std::min(r.withdrawn_from, *first) : *first;
    r.withdrawn_chunk = id;
    r.withdrawn_from = from;
    at = transport_.withdraw(w, id, from);
    if (!running_one_of_them(at)) return;
  }
  r.stopped_for_abort = true;
  transport_.kill(w);
}

}  // namespace procpool::detail
