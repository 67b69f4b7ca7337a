// procpool::detail: the typed halves of the pool's calls: a dense batch (map, try_map, map_into:
// every outcome kept in input order), a stream (imap: outcomes handed out as they come, memory
// bounded), and a task (submit).
#pragma once

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstring>
#include <exception>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "../codec.hpp"
#include "../error.hpp"
#include "../options.hpp"
#include "../outcome.hpp"
#include "batch.hpp"

namespace procpool::detail {

/// Encodes a caller's input range item by item into chunks. `It` may be a move-only input iterator
/// (std::views::istream) and `Sent` a sentinel of another type (std::views::take over an unbounded
/// std::views::iota); each item is encoded as an `In` (the range's value type), converted from what
/// the iterator gives (a proxy such as std::vector<bool>'s, or a prvalue) if need be.
template <class It, class Sent, class In>
class RangeSource {
 public:
  RangeSource(It first, Sent last) : it_(std::move(first)), end_(std::move(last)) {}

  std::size_t encode(std::size_t max_items, std::size_t max_bytes, Buffer& out) {
    const std::size_t start = out.size();
    std::size_t n = 0;
    if constexpr (std::contiguous_iterator<It> && std::sized_sentinel_for<Sent, It> &&
                  std::same_as<std::iter_value_t<It>, In> && is_bitwise_codec_v<In>) {
      // Contiguous trivially-encoded inputs: one memcpy for the whole chunk.
      n = std::min<std::size_t>(max_items, static_cast<std::size_t>(end_ - it_));
      n = std::min(n, std::max<std::size_t>(1, max_bytes / sizeof(In)));
      out.append(std::to_address(it_), n * sizeof(In));
      it_ += static_cast<std::ptrdiff_t>(n);
    } else {
      Encoder e(out);
      while (n < max_items && it_ != end_ && (n == 0 || out.size() - start < max_bytes)) {
        procpool::encode(e, static_cast<const In&>(*it_));
        ++it_;
        ++n;
      }
    }
    encoded_bytes_ += out.size() - start;
    return n;
  }

  /// Bytes encoded so far.
  [[nodiscard]] std::size_t encoded_bytes() const noexcept { return encoded_bytes_; }

 private:
  It it_;
  Sent end_;
  std::size_t encoded_bytes_ = 0;
};

/// Calls a call's on_progress with (done, total) when the count moved.
class ProgressReport {
 public:
  explicit ProgressReport(MapOptions& options) : options_(options) {}
  void operator()(const Batch& b) {
    if (options_.on_progress && b.completed() != reported_) {
      reported_ = b.completed();
      options_.on_progress(b.completed(), b.total_known() ? b.total() : 0);
    }
  }

 private:
  MapOptions& options_;
  std::size_t reported_ = 0;
};

/// map, try_map and map_into: a sized input, every outcome kept in input order.
template <class It, class Sent, class In, class Out>
class DenseBatch final : public Batch {
 public:
  /// `storage`: for map_into, the caller's vector, whose elements the results are decoded into (so
  /// that the memory they own is reused).
  DenseBatch(It first, Sent last, std::size_t size, MapOptions options, std::vector<Out> storage = {})
      : source_(std::move(first), std::move(last)), options_(std::move(options)), values_(std::move(storage)) {
    set_chunk_size(options_.chunk_size);
    set_time_limits(options_.task_timeout, options_.timeout);
    set_known_total(size);
    if (values_.capacity() < size) {
      // Fresh memory for every result: faulted in a few large pages, in one system call, instead
      // of one fault per 4 KiB page as the elements are constructed (buffer.hpp says why).
      values_.reserve(size);
      if constexpr (!std::is_same_v<Out, bool>) prefault_for_write(values_.data(), size * sizeof(Out));
    }
    values_.resize(size);
  }

  std::size_t encode_next(std::size_t max_items, std::size_t max_bytes, Buffer& out) override {
    return source_.encode(max_items, max_bytes, out);
  }

  void accept_value(std::size_t index, Decoder& in) override {
    if constexpr (std::is_same_v<Out, bool>) {
      bool v = false;
      decode(in, v);
      values_[index] = v;
    } else {
      decode(in, values_[index]);
    }
  }

  void discard_value(Decoder& in) override {
    Out v{};
    decode(in, v);
  }

  bool accept_bulk(std::size_t first, std::size_t count, std::span<const std::byte> bytes) override {
    if constexpr (is_bitwise_codec_v<Out> && !std::is_same_v<Out, bool>) {
      if (bytes.size() != count * sizeof(Out)) throw DecodeError("procpool: results of the wrong size");
      std::memcpy(static_cast<void*>(values_.data() + first), bytes.data(), bytes.size());
      return true;
    } else {
      (void)first, (void)count, (void)bytes;
      return false;
    }
  }

  void accept_error(std::size_t index, std::exception_ptr error) override { errors_.emplace(index, std::move(error)); }
  void on_progress() override { progress_(*this); }

  // ---- the caller's side (with the pool's mutex held) ----

  /// map: the values, or the failure of the lowest-numbered failed item.
  std::vector<Out> take_values() {
    if (!errors_.empty()) std::rethrow_exception(errors_.begin()->second);
    return std::move(values_);
  }

  /// map_into: the values, failed items' elements value-initialised; then the failure of the
  /// lowest-numbered failed item is thrown, as by map.
  void take_values_into(std::vector<Out>& out) {
    for (const auto& [index, error] : errors_) values_[index] = Out{};
    out = std::move(values_);
    if (!errors_.empty()) std::rethrow_exception(errors_.begin()->second);
  }

  /// try_map: every item's outcome.
  std::vector<Outcome<Out>> take_outcomes() {
    std::vector<Outcome<Out>> out;
    out.reserve(values_.size());
    for (std::size_t i = 0; i < values_.size(); ++i) {
      const auto e = errors_.find(i);
      if (e != errors_.end())
        out.emplace_back(e->second);
      else
        out.emplace_back(std::move(values_[i]));
    }
    return out;
  }

 private:
  RangeSource<It, Sent, In> source_;
  MapOptions options_;
  ProgressReport progress_{options_};
  std::vector<Out> values_;
  std::map<std::size_t, std::exception_ptr> errors_;
};

/// imap and imap_unordered: items are dispatched as results are consumed, so memory stays bounded
/// however long (or endless) the input is. It owns the input range when imap was given an rvalue.
template <class It, class Sent, class In, class Out>
class StreamRangeBatch final : public StreamBatch<Out> {
 public:
  StreamRangeBatch(std::shared_ptr<void> owned_range, It first, Sent last, std::optional<std::size_t> size,
                   MapOptions options, bool ordered, std::size_t workers)
      : owned_range_(std::move(owned_range)),
        source_(std::move(first), std::move(last)),
        options_(std::move(options)),
        ordered_(ordered),
        workers_(workers) {
    this->set_chunk_size(options_.chunk_size);
    this->set_time_limits(options_.task_timeout, options_.timeout);
    if (size) this->set_known_total(*size);
  }

  std::size_t encode_next(std::size_t max_items, std::size_t max_bytes, Buffer& out) override {
    return source_.encode(max_items, max_bytes, out);
  }
  void accept_value(std::size_t index, Decoder& in) override {
    Out v{};
    decode(in, v);
    ready(index, Outcome<Out>(std::move(v)));
  }
  void discard_value(Decoder& in) override {
    Out v{};
    decode(in, v);
  }
  void accept_error(std::size_t index, std::exception_ptr error) override {
    ready(index, Outcome<Out>(std::move(error)));
  }
  void on_progress() override { progress_(*this); }

  /// At most about 64 MiB of items outstanding (dispatched and not yet consumed), counting each by
  /// the larger of its input's and its result's encoded size, and at least 4 per worker.
  [[nodiscard]] std::size_t room() const override {
    const std::size_t sent = this->dispatched();
    const std::size_t input = sent > 0 ? std::max<std::size_t>(1, source_.encoded_bytes() / sent) : 64;
    const std::size_t result = results_counted_ > 0 ? result_bytes_ / results_counted_ : 0;
    const std::size_t average = std::max(input, result);
    const std::size_t limit = std::clamp<std::size_t>((std::size_t{64} << 20) / average, 4 * workers_, 1 << 16);
    const std::size_t outstanding = sent - consumed_;
    return outstanding >= limit ? 0 : limit - outstanding;
  }
  void note_results(std::size_t count, std::size_t bytes) override {
    results_counted_ += count;
    result_bytes_ += bytes;
  }

  [[nodiscard]] bool has_next() const override {
    if (ordered_) return !ready_.empty() && ready_.begin()->first == next_index_;
    return !ready_.empty();
  }
  [[nodiscard]] bool exhausted() const override {
    return this->source_done() && next_index_ >= this->total() && ready_.empty();
  }
  Outcome<Out> take_next() override {
    auto node = ready_.extract(ready_.begin());
    ++next_index_;
    ++consumed_;
    return std::move(node.mapped());
  }
  void throw_if_ended_early() override {
    if (reported_end_) return;
    if (this->caller_error()) {
      reported_end_ = true;
      std::rethrow_exception(this->caller_error());
    }
    if (this->cut_reason()) {
      reported_end_ = true;
      if (this->aborted() == Abort::deadline) throw TimeoutError(*this->cut_reason());
      if (this->aborted() == Abort::cancelled) throw CancelledError(*this->cut_reason());
      throw Error(*this->cut_reason());
    }
  }

 private:
  void ready(std::size_t index, Outcome<Out> outcome) {
    // Unordered imap hands out in arrival order: the key is then the arrival number.
    const std::size_t key = ordered_ ? index : arrivals_++;
    ready_.emplace(key, std::move(outcome));
  }

  std::shared_ptr<void> owned_range_;  // declared first: the iterators below point into it
  RangeSource<It, Sent, In> source_;
  MapOptions options_;
  ProgressReport progress_{options_};
  bool ordered_;
  std::size_t workers_;
  std::size_t result_bytes_ = 0;
  std::size_t results_counted_ = 0;
  std::map<std::size_t, Outcome<Out>> ready_;
  std::size_t next_index_ = 0;
  std::size_t consumed_ = 0;
  std::size_t arrivals_ = 0;
  bool reported_end_ = false;
};

/// submit(): one item, the arguments, and where its outcome goes.
template <class Args, class R>
class SubmitBatch final : public TaskBatch<R> {
 public:
  SubmitBatch(Args args, std::chrono::nanoseconds task_timeout, std::chrono::nanoseconds timeout)
      : args_(std::move(args)) {
    this->set_time_limits(task_timeout, timeout);
    this->set_known_total(1);
  }

  std::size_t encode_next(std::size_t max_items, std::size_t /*max_bytes*/, Buffer& out) override {
    if (max_items == 0 || sent_) return 0;
    Encoder e(out);
    encode(e, args_);
    sent_ = true;
    return 1;
  }
  void accept_value(std::size_t /*index*/, Decoder& in) override {
    if constexpr (std::is_void_v<R>) {
      outcome_.emplace();
    } else {
      R v{};
      decode(in, v);
      outcome_.emplace(std::move(v));
    }
  }
  void discard_value(Decoder& in) override {
    if constexpr (!std::is_void_v<R>) {
      R v{};
      decode(in, v);
    }
  }
  void accept_error(std::size_t /*index*/, std::exception_ptr error) override { outcome_.emplace(std::move(error)); }

  const Outcome<R>& outcome() override {
    // The caller's own code failed the call (encoding the arguments): that is its outcome.
    if (this->caller_error() && !outcome_) outcome_.emplace(this->caller_error());
    return *outcome_;
  }

  R take() override {
    if constexpr (std::is_void_v<R>) {
      outcome().value();
    } else {
      (void)outcome();
      return std::move(*outcome_).value();
    }
  }

 private:
  Args args_;
  bool sent_ = false;
  std::optional<Outcome<R>> outcome_;
};

}  // namespace procpool::detail
