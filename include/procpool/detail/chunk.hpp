// procpool::detail: a chunk, the unit of work the scheduler hands to one worker: consecutive items
// of one or more batches of the same job, encoded back to back.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "batch.hpp"
#include "buffer.hpp"
#include "lanes.hpp"

namespace procpool::detail {

/// Consecutive items of one batch inside a chunk. A chunk may gather many small batches of the same
/// job (a burst of submit() calls travels as one message).
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
  // The skip list as last sent: the worker answers the items not in it. Items added to `skip`
  // since (their call was stopped) are answered anyway, and their values dropped.
  std::vector<std::uint32_t> sent_skip;
  std::uint32_t flags = 0;       // wire.hpp's ChunkFlags, for the worker
  std::uint32_t delivered = 0;   // items [0, delivered) of a half-decoded result have outcomes
  std::uint32_t lane = kNoLane;  // the transport's shared memory it holds while in flight
  int unexplained_deaths = 0;    // worker deaths outside any item while it was out
  std::int64_t sent_ns = 0;      // when it was last sent, on the scheduler's clock

  /// Walks the items in order, naming each one's batch and index there.
  template <class Visit>
  void for_each_item(Visit&& visit) const {
    std::uint32_t local = 0;
    for (const Segment& seg : segments)
      for (std::uint32_t k = 0; k < seg.count; ++k, ++local) visit(local, *seg.batch, seg.first + k);
  }

  /// Walks the items that have no outcome yet.
  template <class Visit>
  void for_each_open_item(Visit&& visit) const {
    std::size_t s = 0;
    for_each_item([&](std::uint32_t local, Batch& b, std::size_t index) {
      if (s < skip.size() && skip[s] == local) {
        ++s;
        return;
      }
      visit(local, b, index);
    });
  }

  /// Walks the items the worker was sent to run (not in sent_skip), saying whether each has an
  /// outcome already.
  template <class Visit>
  void for_each_sent_item(Visit&& visit) const {
    std::size_t s = 0;
    std::size_t now = 0;
    for_each_item([&](std::uint32_t local, Batch& b, std::size_t index) {
      while (now < skip.size() && skip[now] < local) ++now;
      if (s < sent_skip.size() && sent_skip[s] == local) {
        ++s;
        return;
      }
      visit(local, b, index, now < skip.size() && skip[now] == local);
    });
  }

  /// Whether item `local` has an outcome.
  [[nodiscard]] bool skipped(std::uint32_t local) const noexcept {
    return std::binary_search(skip.begin(), skip.end(), local);
  }

  /// Marks item `local` as having an outcome.
  void add_skip(std::uint32_t local) { skip.insert(std::upper_bound(skip.begin(), skip.end(), local), local); }

  /// Items still to run.
  [[nodiscard]] std::size_t open_items() const noexcept { return count - skip.size(); }

  /// Moves the items out of memory the transport lends (a lane) into the chunk's own buffer, before
  /// the chunk is sent again, maybe elsewhere.
  void own_items() {
    if (items.owns_storage()) return;
    Buffer own;
    own.append(items.data(), items.size());
    items = std::move(own);
  }
};

}  // namespace procpool::detail
