// procpool::as_completed: the futures of submitted tasks, in the order the tasks finish.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <iterator>
#include <memory>
#include <mutex>
#include <vector>

#include <fmt/core.h>

#include "error.hpp"
#include "future.hpp"

namespace procpool {

/// The range procpool::as_completed returns: each future of the vector once, as its task finishes.
/// Iterate it once; the vector must outlive it and keep its size meanwhile.
template <class R>
class AsCompleted {
 public:
  /// Yields each Future<R>& as its task finishes.
  class iterator {
   public:
    /// A Future<R> of the vector.
    using value_type = Future<R>;
    /// The future itself, in the caller's vector.
    using reference = Future<R>&;
    /// Required of an iterator; the range has no meaningful distance.
    using difference_type = std::ptrdiff_t;
    /// Single pass: the order is the order in which the tasks finish.
    using iterator_concept = std::input_iterator_tag;

    /// An iterator of no range (required of an iterator type).
    iterator() = default;
    /// The future whose task finished last, in the caller's vector.
    reference operator*() const { return (*owner_->futures_)[owner_->current_]; }
    /// Waits for the next task to finish.
    iterator& operator++() {
      owner_->advance();
      return *this;
    }
    /// Waits for the next task to finish (input iterators' postfix form returns nothing).
    void operator++(int) { ++*this; }
    /// True once every future has been yielded.
    friend bool operator==(const iterator& it, std::default_sentinel_t /*end*/) { return it.at_end(); }

   private:
    friend class AsCompleted;
    explicit iterator(AsCompleted* owner) : owner_(owner) {}
    [[nodiscard]] bool at_end() const { return owner_->at_end_; }
    AsCompleted* owner_ = nullptr;
  };

  /// Watches `futures`; throws procpool::Error if one of them has no task (see as_completed).
  explicit AsCompleted(std::vector<Future<R>>& futures) : futures_(&futures), yielded_(futures.size(), false) {
    remaining_ = futures.size();
    for (std::size_t i = 0; i < futures.size(); ++i) {
      if (!futures[i].valid())
        throw Error(fmt::format("procpool::as_completed: future {} has no task (default-constructed, moved from, or "
                                "its result already taken); pass only futures whose results have not been taken",
                                i));
      if (futures[i].core_ != futures.front().core_) one_pool_ = false;
    }
    if (!one_pool_) {
      // Futures of several pools: each tells when its task ends (its pool's progress thread
      // drives it), and iteration waits for the first word from any of them.
      finished_ = std::make_shared<Finished>();
      for (std::size_t i = 0; i < futures.size(); ++i)
        futures[i].add_done_callback([finished = finished_, i](const Outcome<R>&) {
          std::lock_guard lock(finished->mu);
          finished->order.push_back(i);
          finished->cv.notify_all();
        });
    }
  }
  AsCompleted(const AsCompleted&) = delete;
  AsCompleted& operator=(const AsCompleted&) = delete;

  /// Waits for the first task to finish.
  iterator begin() {
    if (!started_) {
      started_ = true;
      advance();
    }
    return iterator(this);
  }
  /// The end: compares equal to the iterator once every future has been yielded.
  [[nodiscard]] std::default_sentinel_t end() const noexcept { return {}; }

 private:
  struct Finished {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::size_t> order;
  };

  void advance() {
    if (remaining_ == 0) {
      at_end_ = true;
      return;
    }
    current_ = one_pool_ ? next_of_one_pool() : next_of_several_pools();
    yielded_[current_] = true;
    --remaining_;
  }

  /// All tasks run on one pool: this thread drives it until one of them has settled.
  std::size_t next_of_one_pool() {
    std::vector<Future<R>>& fs = *futures_;
    detail::Driver& driver = *fs.front().core_;
    std::size_t found = fs.size();
    const auto any_settled = [&] {
      for (std::size_t i = 0; i < fs.size(); ++i) {
        if (yielded_[i]) continue;
        // A future whose result was taken meanwhile counts as finished.
        if (!fs[i].task_ || fs[i].task_->settled()) {
          found = i;
          return true;
        }
      }
      return false;
    };
    driver.wait_until(any_settled);
    return found;
  }

  std::size_t next_of_several_pools() {
    std::unique_lock lock(finished_->mu);
    finished_->cv.wait(lock, [&] { return next_reported_ < finished_->order.size(); });
    return finished_->order[next_reported_++];
  }

  std::vector<Future<R>>* futures_;
  std::vector<bool> yielded_;
  std::size_t remaining_ = 0;
  std::size_t current_ = 0;
  bool one_pool_ = true;
  bool started_ = false;
  bool at_end_ = false;
  std::shared_ptr<Finished> finished_;
  std::size_t next_reported_ = 0;
};

/// The futures of `futures`, each once, in the order their tasks finish (like Python's
/// concurrent.futures.as_completed): `for (procpool::Future<int>& f : procpool::as_completed(fs))`.
/// Waiting drives the pool the tasks run on.
template <class R>
[[nodiscard]] AsCompleted<R> as_completed(std::vector<Future<R>>& futures) {
  return AsCompleted<R>(futures);
}

}  // namespace procpool
