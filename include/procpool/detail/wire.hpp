// procpool::detail: the protocol between the pool's parent and its workers, in both directions.
//
// Every message is a fixed FrameHeader followed by `length` payload bytes. The frames are built and
// parsed here only, by functions the parent and the worker both call: append_* builds a frame (or
// the head of one whose bulk is sent from elsewhere), parse_* checks one and returns its fields.
// The parent treats every byte from a worker as untrusted: FrameParser validates kind and length
// before anything is allocated, and parse_results checks every field. A worker checks the parent's
// frames as strictly (parse_job, parse_chunk), and ends with WorkerExit::protocol_error on a bad one.
#pragma once

#include <fmt/core.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../codec.hpp"
#include "../error.hpp"
#include "buffer.hpp"
#include "chunk_flags.hpp"
#include "lanes.hpp"
#include "remote_exception.hpp"

namespace procpool::detail {

/// What a frame carries.
enum class FrameKind : std::uint32_t {
  // parent -> worker
  job = 1,       // payload: u64 runner factory address, then the callable's bytes (append_job_frame)
  chunk = 2,     // payload: see ChunkHeader, skipped local indices, then the encoded items (append_chunk_head)
  shutdown = 3,  // no payload: finish and exit
  wake = 4,      // no payload: sent when a frame was left in the mailbox of a worker asleep in poll
  // worker -> parent
  ready = 16,        // no payload: the initializer has run
  init_failed = 17,  // payload: RemoteException from the initializer
  results = 18,      // payload: see ResultsHeader (append_results_head)
};

/// Who sent a frame: each side sends its own kinds only.
enum class Sender { parent, worker };

/// True if `kind` is one that `from` sends.
[[nodiscard]] constexpr bool is_frame_kind_of(FrameKind kind, Sender from) noexcept {
  switch (kind) {
    case FrameKind::job:
    case FrameKind::chunk:
    case FrameKind::shutdown:
    case FrameKind::wake: return from == Sender::parent;
    case FrameKind::ready:
    case FrameKind::init_failed:
    case FrameKind::results: return from == Sender::worker;
  }
  return false;
}

/// How a worker process ends (its exit status). Anything else is a crash, a signal, or an exit
/// the caller's own code made.
enum class WorkerExit : int {
  finished = 0,            // shutdown frame, or end-of-file: the pool closed it, or the parent is gone
  initializer_failed = 3,  // the initializer threw; an init_failed frame said what, before the exit
  protocol_error = 4,      // the parent sent a frame that does not parse (never happens with a sound parent)
};

/// The exit status for `e`, as worker_main returns it.
[[nodiscard]] constexpr int worker_exit_code(WorkerExit e) noexcept { return static_cast<int>(e); }

/// The fixed header of every frame.
struct FrameHeader {
  FrameKind kind;
  std::uint32_t reserved;
  std::uint64_t id;      // job id or chunk id
  std::uint64_t length;  // payload bytes that follow
};
static_assert(sizeof(FrameHeader) == 24);

/// The start of a chunk frame's payload.
struct ChunkHeader {
  std::uint64_t job_id;
  std::uint32_t count;       // items in the chunk
  std::uint32_t skip_count;  // local indices (u32 each) that follow, not to be run again
  std::uint32_t lane;        // the pair of lanes the chunk holds (see LaneArea), or kNoLane
  std::uint32_t flags;       // ChunkFlags
  std::uint64_t lane_bytes;  // > 0: the items are the first lane_bytes of the items lane, not in the frame
};
static_assert(sizeof(ChunkHeader) == 32);

/// The start of a results frame's payload; the failures come first, then the values of the items
/// that neither failed nor were skipped, back to back in item order.
struct ResultsHeader {
  std::uint32_t count;          // items in the chunk
  std::uint32_t failed_count;   // (u32 local index, RemoteException) pairs that follow
  std::uint64_t failures_size;  // bytes of the failure records
  std::uint64_t compute_ns;     // time spent running the chunk's items, for chunk sizing
  std::uint64_t lane_bytes;  // > 0: the values are the first lane_bytes of the chunk's results lane, not in the frame
  std::uint32_t answered;    // items [0, answered) have outcomes here; the rest were withdrawn before they started
  std::uint32_t reserved;
};
static_assert(sizeof(ResultsHeader) == 40);
static_assert(std::is_trivially_copyable_v<FrameHeader> && std::is_trivially_copyable_v<ChunkHeader> &&
              std::is_trivially_copyable_v<ResultsHeader>);

/// Upper bound on a frame's payload; anything larger is a corrupt or hostile header.
inline constexpr std::uint64_t kMaxFrameLength = std::uint64_t{1} << 40;

/// Checks a frame header from `from` before its payload is read: a kind that side sends, and a
/// length below kMaxFrameLength. Throws DecodeError naming the problem.
inline void check_frame_header(const FrameHeader& h, Sender from) {
  const char* const who = from == Sender::worker ? "a worker" : "the parent";
  if (!is_frame_kind_of(h.kind, from))
    throw DecodeError(
        fmt::format("procpool: {} sent a frame of unknown kind {}", who, static_cast<std::uint32_t>(h.kind)));
  if (h.length > kMaxFrameLength)
    throw DecodeError(fmt::format("procpool: {} sent a frame claiming {} bytes", who, h.length));
}

// ---- building ---------------------------------------------------------------------------------

/// Appends a frame header to `out` and returns the offset of its length field, for frames whose
/// payload size is known only after encoding (see end_frame).
inline std::size_t begin_frame(Buffer& out, FrameKind kind, std::uint64_t id) {
  const FrameHeader h{kind, 0, id, 0};
  const std::size_t at = out.size();
  out.append(&h, sizeof h);
  return at;
}

/// Sets the length of the frame begun at `frame_offset` to everything appended since.
inline void end_frame(Buffer& out, std::size_t frame_offset) {
  const std::uint64_t length = out.size() - frame_offset - sizeof(FrameHeader);
  std::memcpy(out.data() + frame_offset + offsetof(FrameHeader, length), &length, sizeof length);
}

/// Appends a frame without payload: shutdown, wake, ready.
inline void append_empty_frame(Buffer& out, FrameKind kind, std::uint64_t id = 0) {
  const FrameHeader h{kind, 0, id, 0};
  out.append(&h, sizeof h);
}

/// parent -> worker: finish and exit.
inline void append_shutdown_frame(Buffer& out) { append_empty_frame(out, FrameKind::shutdown); }

/// parent -> worker: look at the mailbox (sent to a worker asleep in poll).
inline void append_wake_frame(Buffer& out) { append_empty_frame(out, FrameKind::wake); }

/// worker -> parent: the initializer has run.
inline void append_ready_frame(Buffer& out) { append_empty_frame(out, FrameKind::ready); }

/// worker -> parent: the initializer threw `why`.
inline void append_init_failed_frame(Buffer& out, const RemoteException& why) {
  const std::size_t at = begin_frame(out, FrameKind::init_failed, 0);
  Encoder e(out);
  encode(e, why);
  end_frame(out, at);
}

/// parent -> worker: job `job_id` is the callable `callable`, run by the JobRunner the function at
/// address `runner_factory` rebuilds from those bytes (workers are forks of the parent, so the
/// address means the same function there).
inline void append_job_frame(Buffer& out, std::uint64_t job_id, std::uintptr_t runner_factory,
                             std::span<const std::byte> callable) {
  const FrameHeader h{FrameKind::job, 0, job_id, sizeof runner_factory + callable.size()};
  std::byte* p = out.grow(sizeof h + sizeof runner_factory + callable.size());
  std::memcpy(p, &h, sizeof h);
  std::memcpy(p + sizeof h, &runner_factory, sizeof runner_factory);
  if (!callable.empty()) std::memcpy(p + sizeof h + sizeof runner_factory, callable.data(), callable.size());
}

/// Bytes append_chunk_head appends for a chunk with `skip_count` skipped items.
[[nodiscard]] constexpr std::size_t chunk_head_bytes(std::size_t skip_count) noexcept {
  return sizeof(FrameHeader) + sizeof(ChunkHeader) + skip_count * sizeof(std::uint32_t);
}

/// parent -> worker: the head of chunk `chunk_id` of job `job_id` (frame header, chunk header,
/// skipped indices), which must be followed by exactly `inline_items_bytes` of encoded items. The
/// items are not copied here: the caller sends them from wherever they are, right behind the head.
/// `skip`: ascending local indices below `count` that the worker decodes but does not run.
/// `lane`: the pair of lanes the chunk holds (< LaneArea::kLanesPerWorker), or kNoLane; with
/// `lane_bytes` > 0 the items are the first lane_bytes of that items lane and `inline_items_bytes`
/// must be 0. (parse_chunk rejects anything else.)
inline void append_chunk_head(Buffer& out, std::uint64_t chunk_id, std::uint64_t job_id, std::uint32_t count,
                              std::span<const std::uint32_t> skip, std::uint32_t lane, std::uint64_t lane_bytes,
                              std::size_t inline_items_bytes, std::uint32_t flags = 0) {
  const std::size_t skip_bytes = skip.size_bytes();
  const FrameHeader h{FrameKind::chunk, 0, chunk_id, sizeof(ChunkHeader) + skip_bytes + inline_items_bytes};
  const ChunkHeader ch{job_id, count, static_cast<std::uint32_t>(skip.size()), lane, flags, lane_bytes};
  std::byte* p = out.grow(sizeof h + sizeof ch + skip_bytes);
  std::memcpy(p, &h, sizeof h);
  std::memcpy(p + sizeof h, &ch, sizeof ch);
  if (skip_bytes != 0) std::memcpy(p + sizeof h + sizeof ch, skip.data(), skip_bytes);
}

/// worker -> parent: the head of the results of chunk `chunk_id` (frame header, results header,
/// failure records), which must be followed by exactly `inline_values_bytes` of encoded values,
/// sent from wherever they are. `failures`: `failed_count` (u32 local index, RemoteException)
/// records in ascending index order. `lane_bytes` > 0: the values are the first lane_bytes of the
/// chunk's results lane, and `inline_values_bytes` must be 0. `answered` (default: all): items from
/// there on were withdrawn before they started, and have neither a value nor a failure here.
inline void append_results_head(Buffer& out, std::uint64_t chunk_id, std::uint32_t count, std::uint32_t failed_count,
                                std::span<const std::byte> failures, std::uint64_t compute_ns, std::uint64_t lane_bytes,
                                std::size_t inline_values_bytes, std::optional<std::uint32_t> answered = std::nullopt) {
  const ResultsHeader rh{count, failed_count, failures.size(), compute_ns, lane_bytes, answered.value_or(count), 0};
  const FrameHeader h{FrameKind::results, 0, chunk_id, sizeof rh + failures.size() + inline_values_bytes};
  std::byte* p = out.grow(sizeof h + sizeof rh + failures.size());
  std::memcpy(p, &h, sizeof h);
  std::memcpy(p + sizeof h, &rh, sizeof rh);
  if (!failures.empty()) std::memcpy(p + sizeof h + sizeof rh, failures.data(), failures.size());
}

// ---- parsing ----------------------------------------------------------------------------------

namespace wire_detail {

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_wrong_kind(const char* expected, FrameKind got) {
  throw DecodeError(
      fmt::format("procpool: expected a {} frame, got one of kind {}", expected, static_cast<std::uint32_t>(got)));
}

inline void check_kind_and_length(const FrameHeader& h, FrameKind expected, const char* name,
                                  std::span<const std::byte> payload) {
  if (h.kind != expected) [[unlikely]]
    throw_wrong_kind(name, h.kind);
  if (h.length != payload.size()) [[unlikely]]
    throw DecodeError(
        fmt::format("procpool: a {} frame claims {} payload bytes but holds {}", name, h.length, payload.size()));
}

}  // namespace wire_detail

/// A job frame, checked.
struct ParsedJob {
  std::uint64_t job_id = 0;
  std::uintptr_t runner_factory = 0;  // the RunnerFactory's address, never 0
  std::span<const std::byte> callable;
};

/// Parses a job frame (`payload`: its h.length bytes). Throws DecodeError if it is not a job frame,
/// or too short to hold the runner's address, or names none.
[[nodiscard]] inline ParsedJob parse_job(const FrameHeader& h, std::span<const std::byte> payload) {
  wire_detail::check_kind_and_length(h, FrameKind::job, "job", payload);
  ParsedJob out;
  out.job_id = h.id;
  if (payload.size() < sizeof out.runner_factory)
    throw DecodeError(fmt::format("procpool: a job frame of {} bytes is too short for a runner address ({} bytes)",
                                  payload.size(), sizeof out.runner_factory));
  std::memcpy(&out.runner_factory, payload.data(), sizeof out.runner_factory);
  if (out.runner_factory == 0) throw DecodeError("procpool: a job frame names no runner");
  out.callable = payload.subspan(sizeof out.runner_factory);
  return out;
}

/// The skipped local indices of a chunk: u32s as they lie in the frame, which need not be aligned.
class SkipIndices {
 public:
  SkipIndices() noexcept = default;
  /// `bytes`: a multiple of 4 bytes.
  explicit SkipIndices(std::span<const std::byte> bytes) noexcept : bytes_(bytes) {}

  [[nodiscard]] std::size_t size() const noexcept { return bytes_.size() / sizeof(std::uint32_t); }
  [[nodiscard]] bool empty() const noexcept { return bytes_.empty(); }
  [[nodiscard]] std::uint32_t operator[](std::size_t k) const noexcept {
    std::uint32_t v;
    std::memcpy(&v, bytes_.data() + k * sizeof v, sizeof v);
    return v;
  }
  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return bytes_; }

 private:
  std::span<const std::byte> bytes_;
};

/// A chunk frame, checked. Where the items are when they are in a lane is for the worker to say
/// (it knows its lanes): `items` is then empty and `lane_bytes` > 0.
struct ParsedChunk {
  std::uint64_t chunk_id = 0;
  std::uint64_t job_id = 0;
  std::uint32_t count = 0;           // items in the chunk
  std::uint32_t flags = 0;           // ChunkFlags
  SkipIndices skip;                  // ascending, each < count: decoded but not run
  std::uint32_t lane = kNoLane;      // < the lane count given to parse_chunk, or kNoLane
  std::uint64_t lane_bytes = 0;      // > 0: the items are the first lane_bytes of lane `lane`'s items lane
  std::span<const std::byte> items;  // the encoded items in the frame; empty if lane_bytes > 0
};

/// Parses a chunk frame (`payload`: its h.length bytes) for a worker with `lane_count` pairs of
/// lanes. Throws DecodeError naming the problem: not a chunk frame, a truncated header, more
/// skipped indices than the payload holds, skipped indices out of order or not below the count,
/// a lane index out of range, items in a lane with no lane named or larger than a lane, or items
/// both in a lane and in the frame.
[[nodiscard]] inline ParsedChunk parse_chunk(const FrameHeader& h, std::span<const std::byte> payload,
                                             std::uint32_t lane_count = LaneArea::kLanesPerWorker) {
  wire_detail::check_kind_and_length(h, FrameKind::chunk, "chunk", payload);
  ChunkHeader ch;
  if (payload.size() < sizeof ch) [[unlikely]]
    throw DecodeError(fmt::format("procpool: a chunk frame of {} bytes is too short for its header ({} bytes)",
                                  payload.size(), sizeof ch));
  std::memcpy(&ch, payload.data(), sizeof ch);
  const std::size_t after_header = payload.size() - sizeof ch;
  if ((ch.flags & ~std::uint32_t{kChunkKnownFlags}) != 0) [[unlikely]]
    throw DecodeError(fmt::format("procpool: a chunk frame has unknown flags {:#x}", ch.flags));
  if (ch.skip_count > after_header / sizeof(std::uint32_t)) [[unlikely]]
    throw DecodeError(fmt::format("procpool: a chunk frame lists {} skipped items but holds {} bytes after its header",
                                  ch.skip_count, after_header));
  ParsedChunk out;
  out.chunk_id = h.id;
  out.job_id = ch.job_id;
  out.count = ch.count;
  out.flags = ch.flags;
  const std::size_t skip_bytes = std::size_t{ch.skip_count} * sizeof(std::uint32_t);
  out.skip = SkipIndices(payload.subspan(sizeof ch, skip_bytes));
  for (std::size_t k = 0; k < out.skip.size(); ++k) {
    const std::uint32_t local = out.skip[k];
    if (local >= ch.count || (k > 0 && local <= out.skip[k - 1])) [[unlikely]]
      throw DecodeError(fmt::format("procpool: a chunk frame skips item {} out of order or range (chunk of {} items)",
                                    local, ch.count));
  }
  out.lane = ch.lane;
  out.lane_bytes = ch.lane_bytes;
  out.items = payload.subspan(sizeof ch + skip_bytes);
  if (ch.lane != kNoLane && ch.lane >= lane_count) [[unlikely]]
    throw DecodeError(fmt::format("procpool: a chunk frame names lane {} of {}", ch.lane, lane_count));
  if (ch.lane_bytes > 0) {
    if (ch.lane == kNoLane) [[unlikely]]
      throw DecodeError(
          fmt::format("procpool: a chunk frame puts {} bytes of items in a lane but names no lane", ch.lane_bytes));
    if (ch.lane_bytes > LaneArea::kLaneBytes) [[unlikely]]
      throw DecodeError(
          fmt::format("procpool: a chunk frame claims {} bytes of a lane of {}", ch.lane_bytes, LaneArea::kLaneBytes));
    if (!out.items.empty()) [[unlikely]]
      throw DecodeError(
          fmt::format("procpool: a chunk frame has items both in a lane ({} bytes) and in the frame ({} bytes)",
                      ch.lane_bytes, out.items.size()));
  }
  return out;
}

/// Parses an init_failed frame: what the initializer threw. Throws DecodeError if it is not one,
/// or does not hold exactly one RemoteException.
[[nodiscard]] inline RemoteException parse_init_failed(const FrameHeader& h, std::span<const std::byte> payload) {
  wire_detail::check_kind_and_length(h, FrameKind::init_failed, "init_failed", payload);
  Decoder d(payload);
  RemoteException out = decode_as<RemoteException>(d);
  if (d.remaining() != 0) throw DecodeError("procpool: trailing bytes after an initializer's exception");
  return out;
}

/// A results frame's payload, checked: failures decoded, values still encoded.
struct ParsedResults {
  ResultsHeader header{};
  std::vector<std::pair<std::uint32_t, RemoteException>> failed;  // ascending local indices
  std::span<const std::byte> values;
};

/// Parses the payload of a results frame for a chunk of `count` items whose results lane is `lane`
/// (empty if the chunk holds none). The bytes come from a worker, so everything is checked; throws
/// DecodeError on anything inconsistent.
[[nodiscard]] inline ParsedResults parse_results(std::span<const std::byte> payload, std::uint32_t count,
                                                 std::span<const std::byte> lane = {}) {
  ParsedResults out;
  Decoder d(payload);
  d.read_bytes(&out.header, sizeof out.header);
  const ResultsHeader& h = out.header;
  if (h.count != count) throw DecodeError(fmt::format("procpool: results for {} items, expected {}", h.count, count));
  if (h.failed_count > count || h.failures_size > d.remaining() || h.answered > count)
    throw DecodeError("procpool: inconsistent results header");
  Decoder failures(d.take(static_cast<std::size_t>(h.failures_size)));
  out.failed.reserve(h.failed_count);
  for (std::uint32_t k = 0; k < h.failed_count; ++k) {
    std::uint32_t local;
    failures.read_bytes(&local, sizeof local);
    if (local >= h.answered || (!out.failed.empty() && local <= out.failed.back().first))
      throw DecodeError(fmt::format("procpool: a failure record names item {} out of order or range", local));
    out.failed.emplace_back(local, decode_as<RemoteException>(failures));
  }
  if (failures.remaining() != 0) throw DecodeError("procpool: trailing bytes after the failure records");
  if (h.lane_bytes == 0) {
    out.values = d.take(d.remaining());
  } else {
    if (h.lane_bytes > lane.size())
      throw DecodeError(fmt::format("procpool: results claim {} bytes of a lane of {}", h.lane_bytes, lane.size()));
    if (d.remaining() != 0) throw DecodeError("procpool: results both in a lane and in the frame");
    out.values = lane.first(static_cast<std::size_t>(h.lane_bytes));
  }
  return out;
}

// ---- splitting a byte stream into frames -------------------------------------------------------

/// Splits a byte stream from `From` into frames. Bytes are appended as they arrive; complete
/// frames come out, their headers checked by check_frame_header.
template <Sender From>
class BasicFrameParser {
 public:
  /// Space for at least `n` more bytes; commit() what was actually read.
  std::byte* prepare(std::size_t n) {
    compact();
    return buf_.grow(n);
  }
  void commit(std::size_t prepared, std::size_t used) { buf_.resize(buf_.size() - prepared + used); }

  /// The next complete frame, if any: header and a view of its payload, valid until the next call.
  /// Throws DecodeError for a kind `From` does not send or an absurd length.
  std::optional<std::pair<FrameHeader, std::span<const std::byte>>> next() {
    const std::size_t available = buf_.size() - start_;
    if (available < sizeof(FrameHeader)) return std::nullopt;
    FrameHeader h;
    std::memcpy(&h, buf_.data() + start_, sizeof h);
    check_frame_header(h, From);
    if (available - sizeof h < h.length) return std::nullopt;
    const std::span<const std::byte> payload(buf_.data() + start_ + sizeof h, static_cast<std::size_t>(h.length));
    start_ += sizeof h + static_cast<std::size_t>(h.length);
    return std::make_pair(h, payload);
  }

  /// Bytes of an incomplete frame still waiting for the rest.
  [[nodiscard]] std::size_t pending() const noexcept { return buf_.size() - start_; }

  /// The bytes still missing from the frame whose header has arrived, 0 if its header has not.
  /// Reading exactly these for a large frame leaves nothing after it to move by compact().
  [[nodiscard]] std::size_t missing() const noexcept {
    const std::size_t available = buf_.size() - start_;
    if (available < sizeof(FrameHeader)) return 0;
    FrameHeader h;
    std::memcpy(&h, buf_.data() + start_, sizeof h);
    if (h.length > kMaxFrameLength) return 0;  // next() reports it
    const std::size_t total = sizeof h + static_cast<std::size_t>(h.length);
    return total > available ? total - available : 0;
  }

 private:
  void compact() {
    if (start_ == 0) return;
    buf_.erase_front(start_);
    start_ = 0;
  }

  Buffer buf_;
  std::size_t start_ = 0;
};

/// The parent's parser of what a worker sends: ready, init_failed and results frames.
using FrameParser = BasicFrameParser<Sender::worker>;
/// A parser of what the parent sends a worker: job, chunk, shutdown and wake frames.
using ParentFrameParser = BasicFrameParser<Sender::parent>;

}  // namespace procpool::detail
