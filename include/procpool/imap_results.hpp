// procpool::ImapResults: the lazy results of Pool::imap and imap_unordered.
#pragma once

#include <chrono>
#include <cstddef>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "detail/batch.hpp"
#include "detail/driver.hpp"
#include "error.hpp"
#include "outcome.hpp"

namespace procpool {

class Pool;
namespace mpi {
class Pool;
}  // namespace mpi

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
    using iterator_category = std::input_iterator_tag;  ///< Single pass: results are consumed.
    using value_type = Out;                             ///< The callable's result type.
    using difference_type = std::ptrdiff_t;             ///< As input iterators require.
    using pointer = const Out*;                         ///< What operator-> returns.
    using reference = const Out&;                       ///< What operator* returns.

    /// An iterator that refers to nothing (as input iterators require).
    iterator() = default;
    /// The current item's value; throws its failure (RemoteError, ProcessError, TimeoutError...).
    const Out& operator*() const { return current().value(); }
    /// The current item's value, for member access; throws its failure.
    const Out* operator->() const { return &current().value(); }
    /// Moves to the next result, waiting for it (and driving the pool meanwhile).
    iterator& operator++() {
      owner_->advance();
      return *this;
    }
    /// Moves to the next result (the old position cannot be kept: results are consumed).
    void operator++(int) { ++*this; }
    /// True once every result has been yielded.
    friend bool operator==(const iterator& it, std::default_sentinel_t /*end*/) { return it.at_end(); }

   private:
    friend class ImapResults;
    explicit iterator(ImapResults* owner) : owner_(owner) {}
    [[nodiscard]] const Outcome<Out>& current() const { return *owner_->current_; }
    [[nodiscard]] bool at_end() const { return !owner_->current_.has_value(); }
    ImapResults* owner_ = nullptr;
  };

  /// Moves the iteration; the moved-from range yields nothing.
  ImapResults(ImapResults&&) noexcept = default;
  /// Moves the iteration; the items of the range replaced are abandoned as if it were destroyed.
  ImapResults& operator=(ImapResults&&) noexcept = default;
  ImapResults(const ImapResults&) = delete;
  ImapResults& operator=(const ImapResults&) = delete;
  ~ImapResults() {
    if (core_ && stream_) core_->forget(*stream_);
  }

  /// Starts iteration (fetches the first outcome).
  iterator begin() {
    if (!started_) {
      started_ = true;
      advance();
    }
    return iterator(this);
  }
  /// The end of the results: compare an iterator with it.
  [[nodiscard]] std::default_sentinel_t end() const noexcept { return {}; }

  /// The next outcome, or nullopt at the end: the non-throwing way to consume results. Use
  /// either this or the iterators on one ImapResults, not both.
  std::optional<Outcome<Out>> next_outcome() {
    started_ = true;
    return next();
  }

 private:
  friend class Pool;
  friend class mpi::Pool;  // procpool::mpi::Pool (mpi.hpp) returns them too

  ImapResults(std::shared_ptr<detail::Driver> core, std::shared_ptr<detail::StreamBatch<Out>> stream)
      : core_(std::move(core)), stream_(std::move(stream)) {}

  void advance() { current_ = next(); }

  std::optional<Outcome<Out>> next() {
    if (!stream_) throw Error("procpool::ImapResults: this range was moved from");
    detail::StreamBatch<Out>& s = *stream_;
    core_->wait_until([&] { return s.has_next() || s.exhausted() || s.caller_error(); });
    std::unique_lock lock(core_->mutex());
    if (s.has_next()) return s.take_next();
    s.throw_if_ended_early();
    return std::nullopt;
  }

  std::shared_ptr<detail::Driver> core_;
  std::shared_ptr<detail::StreamBatch<Out>> stream_;
  std::optional<Outcome<Out>> current_;
  bool started_ = false;
};

}  // namespace procpool
