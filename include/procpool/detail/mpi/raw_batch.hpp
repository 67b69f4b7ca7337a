// procpool::detail::mpi: a serving rank's view of one chunk from rank 0, as a call on its local
// pool. The rank knows no types: it splits the chunk's encoded items, and gathers the encoded
// results, with the call's shape function (travel.hpp), and replies with one results payload in
// the local wire format (wire.hpp), which rank 0's scheduler parses as it would a local worker's.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include "../../error.hpp"
#include "../batch.hpp"
#include "../buffer.hpp"
#include "../remote_exception.hpp"
#include "../runner.hpp"
#include "../wire.hpp"
#include "comm.hpp"
#include "travel.hpp"

namespace procpool::detail::mpi {

/// Consecutive items of a chunk that belong to one call on rank 0, and how messages name them.
struct Span {
  std::uint64_t first = 0;  // the call's index of the first item
  std::uint32_t count = 0;
  std::string label;  // for a span of one item: its name there ("the submitted task"); else "item N"
};

/// The failure record of an item failed on a serving rank, as rank 0 decodes it: a RemoteError keeps
/// its remote type; a worker's death or timeout is re-created there as ProcessError / TimeoutError.
inline constexpr const char* kProcessErrorType = "procpool::ProcessError";
inline constexpr const char* kTimeoutErrorType = "procpool::TimeoutError";

class RawBatch final : public Batch {
 public:
  /// Rank chunks aim at this many times the work of a local pool's chunks (about 1 ms each).
  static constexpr std::uint64_t kChunkScale = 16;

  /// `message`: the chunk's message, whose bytes [items_at, items_at + items_size) are its encoded
  /// items; `count`: how many; `skip`: ascending local indices not to run (they have outcomes on
  /// rank 0); `where`: "rank 2 (host node7)", prefixed to messages.
  RawBatch(Buffer message, std::size_t items_at, std::size_t items_size, std::uint32_t count,
           std::vector<std::uint32_t> skip, std::vector<Span> spans, ShapeFn shape, std::string where)
      : message_(std::move(message)),
        items_(message_.view().subspan(items_at, items_size)),
        count_(count),
        skip_(std::move(skip)),
        spans_(std::move(spans)),
        shape_(shape),
        where_(std::move(where)),
        result_fixed_(shape(ShapeQuery::result_fixed_size, {})) {
    const std::size_t fixed = shape_(ShapeQuery::item_fixed_size, {});
    if (fixed != 0 && skip_.empty()) {
      // Items of one size, all to run: located by arithmetic, none listed.
      if (items_.size() != fixed * count_) throw DecodeError("procpool::mpi: a chunk's items have the wrong size");
      fixed_ = fixed;
      set_known_total(count_);
      return;
    }
    // Every item is located, skipped ones too (they lie in the bytes); the open ones are run.
    std::size_t at = 0;
    std::size_t s = 0;
    for (std::uint32_t i = 0; i < count_; ++i) {
      const std::size_t n = fixed != 0 ? fixed : shape_(ShapeQuery::item_size, items_.subspan(at));
      if (n > items_.size() - at) throw DecodeError("procpool::mpi: a chunk's items are truncated");
      if (s < skip_.size() && skip_[s] == i) {
        ++s;
      } else {
        open_.push_back({i, at, n});
      }
      at += n;
    }
    if (at != items_.size()) throw DecodeError("procpool::mpi: trailing bytes after a chunk's items");
    set_known_total(open_.size());
  }
  RawBatch(const RawBatch&) = delete;
  RawBatch& operator=(const RawBatch&) = delete;
  ~RawBatch() override {
    BufferStash::instance().give(std::move(message_));
    BufferStash::instance().give(std::move(arena_));
  }

  std::size_t encode_next(std::size_t max_items, std::size_t max_bytes, Buffer& out) override {
    // Its time on this rank counts from when a local worker first takes some of it, not from when it
    // arrived: chunks queue here behind others (rank 0 pipelines them).
    if (started_ns_ == 0) started_ns_ = monotonic_ns();
    if (fixed_ != 0) {
      const std::size_t n = std::min({max_items, count_ - next_, std::max<std::size_t>(1, max_bytes / fixed_)});
      out.append(items_.data() + next_ * fixed_, n * fixed_);
      next_ += n;
      return n;
    }
    std::size_t n = 0;
    const std::size_t start = out.size();
    while (n < max_items && next_ < open_.size() && (n == 0 || out.size() - start < max_bytes)) {
      // Runs of items that lie back to back are copied at once.
      std::size_t k = next_ + 1;
      std::size_t bytes = open_[next_].size;
      while (k < open_.size() && k - next_ < max_items - n && open_[k].at == open_[k - 1].at + open_[k - 1].size &&
             out.size() - start + bytes < max_bytes) {
        bytes += open_[k].size;
        ++k;
      }
      out.append(items_.data() + open_[next_].at, bytes);
      n += k - next_;
      next_ = k;
    }
    return n;
  }

  void accept_value(std::size_t index, Decoder& in) override {
    if (result_fixed_ != 0) {
      keep(index, 1, in.take(result_fixed_));
      return;
    }
    Decoder probe = in;
    const std::span<const std::byte> rest = probe.take(probe.remaining());
    keep(index, 1, in.take(shape_(ShapeQuery::result_size, rest)));
  }

  void discard_value(Decoder& in) override {
    Decoder probe = in;
    const std::span<const std::byte> rest = probe.take(probe.remaining());
    (void)in.take(shape_(ShapeQuery::result_size, rest));
  }

  bool accept_bulk(std::size_t first, std::size_t count, std::span<const std::byte> bytes) override {
    keep(first, count, bytes);
    return true;
  }

  void accept_error(std::size_t index, std::exception_ptr error) override { failures_[local(index)] = record(error); }

  [[nodiscard]] std::string describe(std::size_t index) const override {
    std::uint32_t local = this->local(index);
    for (const Span& s : spans_) {
      if (local < s.count) return s.label.empty() ? fmt::format("item {}", s.first + local) : s.label;
      local -= s.count;
    }
    return fmt::format("item {}", index);
  }

  /// The results payload for rank 0 (a results frame's payload, wire.hpp), once settled: its head
  /// (counts, timing, failures), then the values, which leave this batch (they are sent from where
  /// they were gathered).
  struct Results {
    Buffer head;
    Buffer values;
  };
  /// `worker_ns_per_item`: what the local workers measured one item of this job to cost (0: not
  /// known yet).
  [[nodiscard]] Results take_results(std::size_t workers, double worker_ns_per_item) {
    Buffer failures;
    Encoder fe(failures);
    for (const auto& [local, why] : failures_) {
      fe.write_bytes(&local, sizeof local);
      encode(fe, why);
    }
    // What rank 0's scheduler sizes the next chunks by, scaled down by kChunkScale since a chunk's
    // round trip between ranks costs far more than one to a local worker (see docs/scaling.md): the
    // workers' own measure of an item's cost, else this chunk's time here over its workers. The
    // latter counts the fixed costs of a chunk's way through this rank as if they were the items':
    // chunks sized by it grew only a few times over per round trip, and a job of tiny items took
    // several calls to reach its chunk size.
    const auto wall = static_cast<std::uint64_t>(started_ns_ == 0 ? 0 : monotonic_ns() - started_ns_);
    const std::uint64_t cost = worker_ns_per_item > 0
                                   ? static_cast<std::uint64_t>(worker_ns_per_item * static_cast<double>(total()))
                                   : wall * std::max<std::size_t>(1, std::min(workers, total()));
    const std::uint64_t compute = cost / kChunkScale;
    Results out;
    if (result_fixed_ != 0) {
      // Each value lies at its item's place; failed items' places are closed up (values are sent
      // for succeeded items only).
      if (!failures_.empty()) {
        std::size_t to = 0;
        for (std::size_t i = 0; i < total(); ++i) {
          if (failures_.count(local(i)) != 0) continue;
          if (to != i)
            std::memmove(arena_.data() + to * result_fixed_, arena_.data() + i * result_fixed_, result_fixed_);
          ++to;
        }
        arena_.resize(to * result_fixed_);
      }
      out.values = std::move(arena_);
    } else if (pieces_.size() <= 1) {
      // Values came in item order, as one piece.
      out.values = std::move(arena_);
    } else {
      std::sort(pieces_.begin(), pieces_.end(), [](const Piece& a, const Piece& b) { return a.first < b.first; });
      std::size_t values = 0;
      for (const Piece& p : pieces_) values += p.size;
      out.values = BufferStash::instance().take(values);
      for (const Piece& p : pieces_) out.values.append(arena_.data() + p.at, p.size);
    }
    // The worker's builder, so that the payload is what a local worker would send; the frame
    // header it writes first is not part of the payload.
    out.head.reserve(sizeof(FrameHeader) + sizeof(ResultsHeader) + failures.size());
    append_results_head(out.head, 0, count_, static_cast<std::uint32_t>(failures_.size()), failures.view(), compute, 0,
                        out.values.size());
    out.head.erase_front(sizeof(FrameHeader));
    return out;
  }

 private:
  struct Open {
    std::uint32_t local;  // its index in the chunk
    std::size_t at;       // where its bytes are
    std::size_t size;
  };
  struct Piece {
    std::size_t first;  // the first open item it holds the values of
    std::size_t count;  // how many items' values, back to back
    std::size_t at;     // in arena_
    std::size_t size;
  };

  /// The chunk's index of the batch's item `index`.
  [[nodiscard]] std::uint32_t local(std::size_t index) const {
    return fixed_ != 0 ? static_cast<std::uint32_t>(index) : open_[index].local;
  }

  /// Keeps the values of `count` items from `first` on. Values of a fixed size go straight to
  /// their items' places. Others usually come in item order (a local chunk's, one by one or as a
  /// block): they then extend the last piece.
  void keep(std::size_t first, std::size_t count, std::span<const std::byte> bytes) {
    if (result_fixed_ != 0) {
      if (bytes.size() != count * result_fixed_ || first + count > total())
        throw DecodeError("procpool::mpi: a local chunk's results do not fit its items");
      if (arena_.capacity() == 0) {
        arena_ = BufferStash::instance().take(result_fixed_ * total());
        arena_.resize(result_fixed_ * total());
      }
      std::memcpy(arena_.data() + first * result_fixed_, bytes.data(), bytes.size());
      return;
    }
    // Guessed to take about as much as the items did (each growth copies).
    if (arena_.capacity() == 0) arena_ = BufferStash::instance().take(std::max(bytes.size(), items_.size()));
    if (!pieces_.empty()) {
      Piece& last = pieces_.back();
      if (last.first + last.count == first && last.at + last.size == arena_.size()) {
        last.count += count;
        last.size += bytes.size();
        arena_.append(bytes.data(), bytes.size());
        return;
      }
    }
    pieces_.push_back({first, count, arena_.size(), bytes.size()});
    arena_.append(bytes.data(), bytes.size());
  }

  /// How an item's failure travels to rank 0 (see kProcessErrorType).
  [[nodiscard]] RemoteException record(const std::exception_ptr& error) const {
    // The local pool's messages begin with its name; on rank 0 they begin with where they happened.
    const auto located = [&](std::string_view what) {
      constexpr std::string_view prefix = "procpool::Pool: ";
      if (what.substr(0, prefix.size()) == prefix) what.remove_prefix(prefix.size());
      return fmt::format("{}: {}", where_, what);
    };
    try {
      std::rethrow_exception(error);
    } catch (const RemoteError& e) {
      return {e.type_name(), e.remote_what()};
    } catch (const ProcessError& e) {
      return {kProcessErrorType, located(e.what())};
    } catch (const TimeoutError& e) {
      return {kTimeoutErrorType, located(e.what())};
    } catch (...) {
      RemoteException r = describe_current_exception();
      r.what = located(r.what);
      return r;
    }
  }

  Buffer message_;
  std::span<const std::byte> items_;
  std::size_t fixed_ = 0;  // > 0: every item has this size and none is skipped (open_ is then empty)
  std::uint32_t count_;
  std::vector<std::uint32_t> skip_;
  std::vector<Span> spans_;
  ShapeFn shape_;
  std::string where_;
  std::size_t result_fixed_;  // > 0: every result has this size
  std::int64_t started_ns_ = 0;
  std::vector<Open> open_;
  std::size_t next_ = 0;
  std::vector<Piece> pieces_;
  Buffer arena_;
  std::map<std::uint32_t, RemoteException> failures_;
};

}  // namespace procpool::detail::mpi
