// procpool::detail: framing of the messages between the pool's parent and its workers.
//
// Every message is a fixed header followed by `length` payload bytes. The parent treats every byte
// from a worker as untrusted: FrameParser validates kind and length before anything is allocated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "../codec.hpp"
#include "../error.hpp"
#include "buffer.hpp"
#include "remote_exception.hpp"

namespace procpool::detail {

/// What a frame carries.
enum class FrameKind : std::uint32_t {
  // parent -> worker
  job = 1,       // payload: u64 runner factory address, then the callable's bytes
  chunk = 2,     // payload: see ChunkHeader, skipped local indices, then the encoded items
  shutdown = 3,  // no payload: finish and exit
  wake = 4,      // no payload: sent when a frame was left in the mailbox of a worker asleep in poll
  // worker -> parent
  ready = 16,        // no payload: the initializer has run
  init_failed = 17,  // payload: RemoteException from the initializer
  results = 18,      // payload: see ResultsHeader
};

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
  std::uint32_t reserved;
  std::uint64_t lane_bytes;  // > 0: the items are the first lane_bytes of the items lane, not in the frame
};

/// The start of a results frame's payload; the failures come first, then the values of the items
/// that neither failed nor were skipped, back to back in item order.
struct ResultsHeader {
  std::uint32_t count;          // items in the chunk
  std::uint32_t failed_count;   // (u32 local index, RemoteException) pairs that follow
  std::uint64_t failures_size;  // bytes of the failure records
  std::uint64_t compute_ns;     // time spent running the chunk's items, for chunk sizing
  std::uint64_t lane_bytes;     // > 0: the values are the first lane_bytes of the chunk's results lane, not in the frame
};

/// Upper bound on a frame from a worker; anything larger is a corrupt or hostile header.
inline constexpr std::uint64_t kMaxFrameLength = std::uint64_t{1} << 40;

/// Appends a frame header to `out` and returns the offset of its length field, for frames whose
/// payload size is known only after encoding (see patch_length).
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
  if (h.count != count) throw DecodeError("procpool: results for " + std::to_string(h.count) + " items, expected " + std::to_string(count));
  if (h.failed_count > count || h.failures_size > d.remaining()) throw DecodeError("procpool: inconsistent results header");
  Decoder failures(d.take(static_cast<std::size_t>(h.failures_size)));
  out.failed.reserve(h.failed_count);
  for (std::uint32_t k = 0; k < h.failed_count; ++k) {
    std::uint32_t local;
    failures.read_bytes(&local, sizeof local);
    if (local >= count || (!out.failed.empty() && local <= out.failed.back().first))
      throw DecodeError("procpool: a failure record names item " + std::to_string(local) + " out of order or range");
    out.failed.emplace_back(local, decode_as<RemoteException>(failures));
  }
  if (failures.remaining() != 0) throw DecodeError("procpool: trailing bytes after the failure records");
  if (h.lane_bytes == 0) {
    out.values = d.take(d.remaining());
  } else {
    if (h.lane_bytes > lane.size()) throw DecodeError("procpool: results claim " + std::to_string(h.lane_bytes) +
                                                      " bytes of a lane of " + std::to_string(lane.size()));
    if (d.remaining() != 0) throw DecodeError("procpool: results both in a lane and in the frame");
    out.values = lane.first(static_cast<std::size_t>(h.lane_bytes));
  }
  return out;
}

/// Splits a byte stream into frames. Bytes are appended as they arrive; complete frames come out.
class FrameParser {
 public:
  /// Space for at least `n` more bytes; commit() what was actually read.
  std::byte* prepare(std::size_t n) {
    compact();
    return buf_.grow(n);
  }
  void commit(std::size_t prepared, std::size_t used) { buf_.resize(buf_.size() - prepared + used); }

  /// The next complete frame, if any: header and a view of its payload, valid until the next call.
  /// Throws DecodeError for an unknown kind or an absurd length.
  std::optional<std::pair<FrameHeader, std::span<const std::byte>>> next() {
    const std::size_t available = buf_.size() - start_;
    if (available < sizeof(FrameHeader)) return std::nullopt;
    FrameHeader h;
    std::memcpy(&h, buf_.data() + start_, sizeof h);
    const auto k = static_cast<std::uint32_t>(h.kind);
    if (k != 16 && k != 17 && k != 18)
      throw DecodeError("procpool: a worker sent a frame of unknown kind " + std::to_string(k));
    if (h.length > kMaxFrameLength)
      throw DecodeError("procpool: a worker sent a frame claiming " + std::to_string(h.length) + " bytes");
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

}  // namespace procpool::detail
