// procpool::detail: a Batch is one call on the pool (a map, an imap, a submit) as the scheduler sees
// it: a source of encoded items and a sink for their outcomes.
//
// Its bookkeeping (how many items went out, how many have an outcome, whether the input is over)
// is private and written by the Scheduler alone; the typed halves (batches.hpp) only read it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include "../codec.hpp"
#include "../outcome.hpp"
#include "buffer.hpp"

namespace procpool::detail {

class Scheduler;

/// Why a call stopped before all its items ran: its Future was cancelled, or its deadline passed.
enum class Abort : std::uint8_t { none, cancelled, deadline };

class Batch {
 public:
  Batch() = default;
  Batch(const Batch&) = delete;
  Batch& operator=(const Batch&) = delete;
  virtual ~Batch() = default;

  // ---- what the typed half provides --------------------------------------------------------

  /// Encodes up to `max_items` more items into `out`, stopping early once `max_bytes` are
  /// written (but always at least one item); returns how many were encoded (0: source exhausted).
  virtual std::size_t encode_next(std::size_t max_items, std::size_t max_bytes, Buffer& out) = 0;
  /// Decodes the value of item `index` (throws DecodeError on malformed bytes).
  virtual void accept_value(std::size_t index, Decoder& in) = 0;
  /// Decodes and drops the value of an item that already has its outcome: the call was stopped
  /// (cancelled, or its deadline passed) while the item was out (throws DecodeError on malformed bytes).
  virtual void discard_value(Decoder& in) = 0;
  /// Takes `count` values of items first.. as one contiguous block when the result type is
  /// bitwise; returns false when this batch does not take that path.
  virtual bool accept_bulk(std::size_t /*first*/, std::size_t /*count*/, std::span<const std::byte> /*bytes*/) {
    return false;
  }
  /// Records that item `index` failed.
  virtual void accept_error(std::size_t index, std::exception_ptr error) = 0;
  /// How to name item `index` in a message ("item 41", "the submitted task").
  [[nodiscard]] virtual std::string describe(std::size_t index) const { return fmt::format("item {}", index); }
  /// Called after outcomes arrived (progress callbacks).
  virtual void on_progress() {}
  /// How many more items may be dispatched now (imap bounds its memory this way).
  [[nodiscard]] virtual std::size_t room() const { return SIZE_MAX; }
  /// Told of the encoded size of results as they arrive (imap bounds its memory by them too).
  virtual void note_results(std::size_t /*count*/, std::size_t /*bytes*/) {}
  /// True for a stream (imap): items are dispatched as they are consumed, so when the pool stops
  /// under it the rest of its input is cut off, never iterated (it may be endless).
  [[nodiscard]] virtual bool streaming() const { return false; }
  /// Whether the call may be cancelled once out (a Future's task): workers then publish each item
  /// they start so that a cancelled task that has not started is sure never to start.
  [[nodiscard]] virtual bool cancellable() const { return false; }
  /// Whether done callbacks wait to run (a settled batch's are run by the driver).
  [[nodiscard]] virtual bool has_done_callbacks() const { return false; }
  /// Runs the done callbacks, called once the batch settled with `lock` (the driver's mutex) held;
  /// the lock is released while each callback runs.
  virtual void run_done_callbacks(std::unique_lock<std::mutex>& /*lock*/) {}

  // ---- its state, as the scheduler keeps it --------------------------------------------------

  /// The job (callable) every item of this batch runs.
  [[nodiscard]] std::uint64_t job_id() const noexcept { return job_id_; }
  /// The number of items, once known (sized inputs know it from the start).
  [[nodiscard]] std::size_t total() const noexcept { return total_; }
  [[nodiscard]] bool total_known() const noexcept { return total_known_; }
  /// Items encoded into chunks so far.
  [[nodiscard]] std::size_t dispatched() const noexcept { return dispatched_; }
  /// Items with an outcome so far.
  [[nodiscard]] std::size_t completed() const noexcept { return completed_; }
  /// Nothing more of the input will be dispatched.
  [[nodiscard]] bool source_done() const noexcept { return source_done_; }
  /// Items per chunk asked for by this call (0: the pool's setting or automatic).
  [[nodiscard]] std::size_t chunk_size() const noexcept { return chunk_size_; }
  /// Every item dispatched has its outcome, and nothing more will be dispatched.
  [[nodiscard]] bool finished() const noexcept { return source_done_ && completed_ == dispatched_; }
  /// Nothing more to wait for: every item has an outcome, or the call failed as a whole.
  [[nodiscard]] bool settled() const noexcept { return finished() || caller_error_ != nullptr; }
  /// An exception thrown by the caller's own code run for this call in the parent (iterating its
  /// input, encoding an argument, its progress callback): the call fails with it.
  [[nodiscard]] const std::exception_ptr& caller_error() const noexcept { return caller_error_; }
  /// Why a stream stopped before it dispatched all its input (the pool stopped under it).
  [[nodiscard]] const std::optional<std::string>& cut_reason() const noexcept { return cut_reason_; }
  /// The caller no longer waits for this batch: its code is never run again.
  [[nodiscard]] bool forgotten() const noexcept { return forgotten_; }
  /// Whether (and why) the call was stopped before all its items ran.
  [[nodiscard]] Abort aborted() const noexcept { return aborted_; }
  /// The limit on each item's run for this call; 0: the pool's.
  [[nodiscard]] std::chrono::nanoseconds task_timeout() const noexcept { return task_timeout_; }
  /// The limit on the whole call, from the moment it is queued; 0: none.
  [[nodiscard]] std::chrono::nanoseconds timeout() const noexcept { return timeout_; }

 protected:
  /// For typed halves that know their size (or chunking) when they are made.
  void set_known_total(std::size_t total) noexcept {
    total_ = total;
    total_known_ = true;
    if (total == 0) source_done_ = true;
  }
  void set_chunk_size(std::size_t n) noexcept { chunk_size_ = n; }
  void set_time_limits(std::chrono::nanoseconds task_timeout, std::chrono::nanoseconds timeout) noexcept {
    task_timeout_ = task_timeout;
    timeout_ = timeout;
  }

 private:
  friend class Scheduler;

  std::uint64_t job_id_ = 0;
  std::size_t total_ = 0;
  bool total_known_ = false;
  std::size_t dispatched_ = 0;
  std::size_t completed_ = 0;
  std::size_t chunk_size_ = 0;
  bool source_done_ = false;
  std::exception_ptr caller_error_;
  bool forgotten_ = false;
  std::optional<std::string> cut_reason_;
  Abort aborted_ = Abort::none;
  std::chrono::nanoseconds task_timeout_{0};
  std::chrono::nanoseconds timeout_{0};
  std::int64_t deadline_ns_ = 0;  // on the scheduler's clock, once queued; 0: none
};

/// A batch of one task whose result a Future takes (submit). Its done callbacks (and their state
/// below) are guarded by the driver's mutex.
template <class R>
class TaskBatch : public Batch {
 public:
  using Callback = std::function<void(const Outcome<R>&)>;

  /// The outcome: the value, or the task's failure rethrown. Called once, after it settled and
  /// its done callbacks ran.
  virtual R take() = 0;
  /// The outcome as done callbacks see it; only once settled, before take().
  [[nodiscard]] virtual const Outcome<R>& outcome() = 0;
  [[nodiscard]] std::string describe(std::size_t /*index*/) const override { return "the submitted task"; }
  [[nodiscard]] bool cancellable() const override { return true; }

  /// Queues a callback for when the task settles; false if it has settled and no callback is
  /// running, in which case the caller runs it at once.
  bool queue_callback(Callback& f) {
    if (settled() && callbacks_.empty() && !callbacks_running_) return false;
    callbacks_.push_back(std::move(f));
    return true;
  }
  [[nodiscard]] bool has_done_callbacks() const override { return !callbacks_.empty() || callbacks_running_; }
  /// No callback is queued or running: take() may move the outcome out.
  [[nodiscard]] bool callbacks_idle() const noexcept { return callbacks_.empty() && !callbacks_running_; }
  /// What the first callback that threw threw, if one did; the caller who takes it reports it.
  [[nodiscard]] std::exception_ptr take_callback_error() noexcept { return std::exchange(callback_error_, nullptr); }

  ~TaskBatch() override {
    // Nobody asked for the task's outcome (its Future was dropped): the callback's failure is not
    // lost silently.
    if (callback_error_) {
      try {
        std::rethrow_exception(callback_error_);
      } catch (const std::exception& e) {
        fmt::print(stderr,
                   "procpool: a done callback of a submitted task threw, and nobody took the task's result: {}\n",
                   e.what());
      } catch (...) {
        fmt::print(stderr, "procpool: a done callback of a submitted task threw a non-standard exception, and nobody "
                           "took the task's result\n");
      }
    }
  }

  void run_done_callbacks(std::unique_lock<std::mutex>& lock) override {
    if (callbacks_running_) return;  // another thread runs them, and takes the ones queued meanwhile
    callbacks_running_ = true;
    while (!callbacks_.empty()) {
      std::vector<Callback> batch = std::exchange(callbacks_, {});
      const Outcome<R>& o = outcome();
      lock.unlock();
      std::exception_ptr thrown;
      for (Callback& f : batch) {
        try {
          f(o);
        } catch (...) {
          if (!thrown) thrown = std::current_exception();
        }
      }
      lock.lock();
      if (thrown && !callback_error_) callback_error_ = thrown;
    }
    callbacks_running_ = false;
  }

 private:
  std::vector<Callback> callbacks_;
  bool callbacks_running_ = false;
  std::exception_ptr callback_error_;
};

/// A batch whose outcomes are handed out one by one as they arrive (imap).
template <class Out>
class StreamBatch : public Batch {
 public:
  /// Whether the next outcome is available.
  [[nodiscard]] virtual bool has_next() const = 0;
  /// Nothing more will come (every dispatched outcome was taken, and the input is over).
  [[nodiscard]] virtual bool exhausted() const = 0;
  /// The next outcome; only when has_next().
  virtual Outcome<Out> take_next() = 0;
  /// Once nothing is ready: throws why the stream ended early, if it did (once).
  virtual void throw_if_ended_early() = 0;
  [[nodiscard]] bool streaming() const final { return true; }
};

}  // namespace procpool::detail
