// libFuzzer target over the pool protocol (detail/wire.hpp), in both directions. Bytes from a
// worker are untrusted input to the parent, and a worker checks the parent's frames as strictly.
// Only procpool::DecodeError may be thrown; crashes, sanitizer reports, other exceptions and
// broken invariants (trapped) are bugs.
//
// The first input byte: its low 6 bits give the size of each simulated read (1 to 64 bytes), its
// top 2 bits the mode:
//   0  a worker's byte stream, through FrameParser, each frame handled as the parent handles it
//      (results parsed, values decoded, from the frame or from the chunk's results lane);
//   1  the parent's byte stream, through ParentFrameParser, each frame handled as a worker handles
//      it (parse_job, parse_chunk, items decoded from the frame or from the chunk's items lane);
//   2  one payload handed straight to a parser, the next byte choosing which (chunk, job,
//      results, init_failed): no frame header to guess first;
//   3  fields taken from the input, built into chunk and results frames by the builders, parsed
//      back: the parsed fields must be the ones built.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <procpool/detail/wire.hpp>
#include <string>
#include <vector>

namespace {

namespace wire = procpool::detail;
using wire::FrameHeader;
using wire::FrameKind;

void require(bool ok) {
  if (!ok) __builtin_trap();
}

// ---- mode 0: what the parent does with a worker's frames ----------------------------------------

void handle_from_worker(const FrameHeader& h, std::span<const std::byte> payload, std::span<const std::byte> lane) {
  if (h.kind == FrameKind::init_failed) {
    (void)wire::parse_init_failed(h, payload);
    return;
  }
  if (h.kind != FrameKind::results) return;
  // The chunk size the parent expects is whatever the frame id says here, bounded like a real chunk.
  const auto count = static_cast<std::uint32_t>(h.id % 4096);
  // Odd ids stand for chunks that hold a results lane, whose bytes the worker wrote as it pleased.
  const auto parsed = wire::parse_results(payload, count, h.id % 2 == 1 ? lane : std::span<const std::byte>{});
  require(parsed.header.count == count && parsed.failed.size() == parsed.header.failed_count);
  for (std::size_t k = 0; k < parsed.failed.size(); ++k)
    require(parsed.failed[k].first < count && (k == 0 || parsed.failed[k - 1].first < parsed.failed[k].first));
  procpool::Decoder values(parsed.values);
  std::size_t failed = 0;
  for (std::uint32_t i = 0; i < count; ++i) {
    if (failed < parsed.failed.size() && parsed.failed[failed].first == i) {
      ++failed;
      continue;
    }
    // Alternate the result types the parent would decode.
    if (i % 2 == 0) {
      (void)procpool::decode_as<std::string>(values);
    } else {
      (void)procpool::decode_as<std::vector<int>>(values);
    }
  }
}

// ---- mode 1: what a worker does with the parent's frames ----------------------------------------

void check_chunk(const wire::ParsedChunk& c, std::span<const std::byte> payload) {
  for (std::size_t k = 0; k < c.skip.size(); ++k) require(c.skip[k] < c.count && (k == 0 || c.skip[k - 1] < c.skip[k]));
  require(c.lane == wire::kNoLane || c.lane < wire::LaneArea::kLanesPerWorker);
  require(c.lane_bytes == 0 || (c.items.empty() && c.lane != wire::kNoLane));
  require(c.items.empty() ||
          (c.items.data() >= payload.data() && c.items.data() + c.items.size() == payload.data() + payload.size()));
}

void handle_from_parent(const FrameHeader& h, std::span<const std::byte> payload, std::span<const std::byte> lane) {
  if (h.kind == FrameKind::job) {
    const auto job = wire::parse_job(h, payload);
    require(job.runner_factory != 0 && job.callable.size() + sizeof job.runner_factory == payload.size());
    return;
  }
  if (h.kind != FrameKind::chunk) return;
  const auto c = wire::parse_chunk(h, payload);
  check_chunk(c, payload);
  // The worker resolves a lane itself; the simulated items lane is smaller than a real one.
  std::span<const std::byte> items = c.items;
  if (c.lane_bytes > 0) {
    if (c.lane_bytes > lane.size()) return;  // the worker ends with protocol_error
    items = lane.first(static_cast<std::size_t>(c.lane_bytes));
  }
  // Every item is decoded, skipped or not, as the worker does; each takes at least one byte, so
  // a huge count ends with the bytes.
  procpool::Decoder d(items);
  for (std::uint32_t i = 0; i < c.count; ++i) {
    if (i % 2 == 0) {
      (void)procpool::decode_as<int>(d);
    } else {
      (void)procpool::decode_as<std::string>(d);
    }
  }
}

template <class Parser, class Handle>
void run_stream(const std::uint8_t* data, std::size_t size, std::size_t step, std::span<const std::byte> lane,
                Handle handle) {
  Parser parser;
  try {
    for (std::size_t at = 0; at < size; at += step) {
      const std::size_t n = std::min(step, size - at);
      std::byte* dst = parser.prepare(n);
      std::memcpy(dst, data + at, n);
      parser.commit(n, n);
      while (auto frame = parser.next()) {
        require(frame->second.size() == frame->first.length);
        try {
          handle(frame->first, frame->second, lane);
        } catch (const procpool::DecodeError&) {
          // A malformed frame: its receiver gives up on the sender; here we go on with the next.
        }
      }
    }
  } catch (const procpool::DecodeError&) {
    // An impossible header: its receiver gives up on the sender.
  }
}

// ---- mode 2: one payload straight to a parser ---------------------------------------------------

void parse_one(const std::uint8_t* data, std::size_t size, std::span<const std::byte> lane) {
  if (size < 1) return;
  const std::uint8_t which = data[0];
  const std::span<const std::byte> payload(reinterpret_cast<const std::byte*>(data + 1), size - 1);
  static constexpr FrameKind kKinds[] = {FrameKind::chunk, FrameKind::job, FrameKind::results, FrameKind::init_failed};
  const FrameHeader h{kKinds[which % 4], 0, which / 4u, payload.size()};
  try {
    if (h.kind == FrameKind::chunk || h.kind == FrameKind::job) {
      handle_from_parent(h, payload, lane);
    } else {
      handle_from_worker(h, payload, lane);
    }
  } catch (const procpool::DecodeError&) {
  }
}

// ---- mode 3: builders and parsers agree ---------------------------------------------------------

class Fields {
 public:
  Fields(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  template <class T>
  T take() {
    T v{};
    const std::size_t n = std::min(sizeof v, size_ - at_);
    std::memcpy(&v, data_ + at_, n);
    at_ += n;
    return v;
  }
  std::span<const std::byte> rest() { return {reinterpret_cast<const std::byte*>(data_ + at_), size_ - at_}; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
};

void round_trip(const std::uint8_t* data, std::size_t size) {
  Fields in(data, size);
  const auto chunk_id = in.take<std::uint64_t>();
  const auto job_id = in.take<std::uint64_t>();
  const auto count = in.take<std::uint16_t>();  // real chunks are small; keeps the failures below cheap
  const auto lane_choice = in.take<std::uint8_t>();
  const std::uint32_t lane = lane_choice % 3 == 2 ? wire::kNoLane : lane_choice % 3;
  const auto lane_size = in.take<std::uint32_t>();
  const std::uint64_t lane_bytes =
      lane != wire::kNoLane && (lane_choice & 0x80) != 0 ? 1 + lane_size % wire::LaneArea::kLaneBytes : 0;
  const auto skip_count = in.take<std::uint8_t>();
  std::vector<std::uint32_t> skip;
  for (unsigned k = 0; k < skip_count && count > 0; ++k) skip.push_back(in.take<std::uint16_t>() % count);
  std::sort(skip.begin(), skip.end());
  skip.erase(std::unique(skip.begin(), skip.end()), skip.end());
  const std::span<const std::byte> items = lane_bytes > 0 ? std::span<const std::byte>{} : in.rest();

  procpool::detail::Buffer b;
  wire::append_chunk_head(b, chunk_id, job_id, count, skip, lane, lane_bytes, items.size());
  require(b.size() == wire::chunk_head_bytes(skip.size()));
  b.append(items.data(), items.size());
  FrameHeader h;
  std::memcpy(&h, b.data(), sizeof h);
  const std::span<const std::byte> payload = b.view().subspan(sizeof h);
  const auto c = wire::parse_chunk(h, payload);  // must not throw: DecodeError here is a bug
  check_chunk(c, payload);
  require(c.chunk_id == chunk_id && c.job_id == job_id && c.count == count && c.lane == lane &&
          c.lane_bytes == lane_bytes && c.skip.size() == skip.size());
  for (std::size_t k = 0; k < skip.size(); ++k) require(c.skip[k] == skip[k]);
  require(c.items.size() == items.size() &&
          (items.empty() || std::memcmp(c.items.data(), items.data(), items.size()) == 0));

  // The results of that chunk: the skipped items' places fail instead, the bytes after the
  // fields are the values.
  procpool::detail::Buffer failures;
  procpool::Encoder fe(failures);
  for (const std::uint32_t i : skip) {
    fe.write_bytes(&i, sizeof i);
    procpool::encode(fe, wire::RemoteException{"fuzz", std::to_string(i)});
  }
  b.clear();
  wire::append_results_head(b, chunk_id, count, static_cast<std::uint32_t>(skip.size()), failures.view(), job_id, 0,
                            items.size());
  b.append(items.data(), items.size());
  std::memcpy(&h, b.data(), sizeof h);
  require(h.kind == FrameKind::results && h.id == chunk_id && h.length == b.size() - sizeof h);
  const auto r = wire::parse_results(b.view().subspan(sizeof h), count);
  require(r.header.compute_ns == job_id && r.failed.size() == skip.size());
  for (std::size_t k = 0; k < skip.size(); ++k)
    require(r.failed[k].first == skip[k] && r.failed[k].second.what == std::to_string(skip[k]));
  require(r.values.size() == items.size() &&
          (items.empty() || std::memcmp(r.values.data(), items.data(), items.size()) == 0));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t step = 1 + data[0] % 64;  // how many bytes each simulated read delivers
  const unsigned mode = data[0] >> 6;
  ++data;
  --size;
  // The simulated lane holds the input itself, over and over.
  std::vector<std::byte> lane(4096);
  for (std::size_t i = 0; i < lane.size() && size > 0; ++i) lane[i] = static_cast<std::byte>(data[i % size]);
  switch (mode) {
    case 0: run_stream<wire::FrameParser>(data, size, step, lane, handle_from_worker); break;
    case 1: run_stream<wire::ParentFrameParser>(data, size, step, lane, handle_from_parent); break;
    case 2: parse_one(data, size, lane); break;
    default: round_trip(data, size); break;
  }
  return 0;
}
