// The protocol between a pool's parent and its workers (detail/wire.hpp): every frame a builder
// makes parses back to the same fields, in both directions; every malformed frame is rejected with
// a DecodeError that names the problem; a worker fed such frames ends with its protocol_error exit
// code. Also the spin-wait both sides use (detail/spin.hpp).
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <procpool/detail/spin.hpp>
#include <procpool/detail/wire.hpp>
#include <procpool/detail/worker.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

namespace {

using procpool::DecodeError;
using procpool::Decoder;
using procpool::Encoder;
using procpool::detail::Buffer;
using procpool::detail::ChunkHeader;
using procpool::detail::FrameHeader;
using procpool::detail::FrameKind;
using procpool::detail::kNoLane;
using procpool::detail::LaneArea;
using procpool::detail::RemoteException;
using procpool::detail::ResultsHeader;
using procpool::detail::WorkerExit;

/// A whole frame in one buffer, split back into its header and payload (as the readers do).
struct Frame {
  FrameHeader header{};
  std::vector<std::byte> payload;
  [[nodiscard]] std::span<const std::byte> view() const noexcept { return payload; }
};

Frame split(std::span<const std::byte> bytes) {
  REQUIRE(bytes.size() >= sizeof(FrameHeader));
  Frame f;
  std::memcpy(&f.header, bytes.data(), sizeof f.header);
  f.payload.assign(bytes.begin() + sizeof(FrameHeader), bytes.end());
  return f;
}

/// The DecodeError message `f` throws; fails the test if it throws nothing (other exceptions
/// escape and fail it too).
template <class F>
std::string rejection(F&& f) {
  try {
    f();
  } catch (const DecodeError& e) {
    return e.what();
  }
  FAIL("no DecodeError was thrown");
  return {};
}

std::vector<std::byte> encoded_ints(const std::vector<int>& xs) {
  Buffer b;
  Encoder e(b);
  for (const int x : xs) procpool::encode(e, x);
  return {b.data(), b.data() + b.size()};
}

/// A chunk frame built the way the parent builds one: its head, then its items behind it.
Frame chunk_frame(std::uint64_t chunk_id, std::uint64_t job_id, std::uint32_t count, std::vector<std::uint32_t> skip,
                  std::uint32_t lane, std::uint64_t lane_bytes, const std::vector<std::byte>& items) {
  Buffer b;
  procpool::detail::append_chunk_head(b, chunk_id, job_id, count, skip, lane, lane_bytes, items.size());
  b.append(items.data(), items.size());
  return split(b.view());
}

/// A chunk frame from raw header fields, for the malformed cases the builder never makes.
Frame raw_chunk(ChunkHeader ch, const std::vector<std::uint32_t>& skip, std::size_t item_bytes) {
  Frame f;
  f.payload.resize(sizeof ch + skip.size() * sizeof(std::uint32_t) + item_bytes, std::byte{0x2A});
  std::memcpy(f.payload.data(), &ch, sizeof ch);
  if (!skip.empty()) std::memcpy(f.payload.data() + sizeof ch, skip.data(), skip.size() * sizeof(std::uint32_t));
  f.header = FrameHeader{FrameKind::chunk, 0, 9, f.payload.size()};
  return f;
}

std::vector<std::uint32_t> skips_of(const procpool::detail::ParsedChunk& c) {
  std::vector<std::uint32_t> out;
  for (std::size_t k = 0; k < c.skip.size(); ++k) out.push_back(c.skip[k]);
  return out;
}

int job_runner_marker(int) { return 0; }

}  // namespace

// ---- builders parse back --------------------------------------------------------------------

TEST_CASE("a job frame parses back to its job id, runner address and callable bytes", "[wire]") {
  const std::vector<std::byte> callable = {std::byte{1}, std::byte{2}, std::byte{3}};
  const auto address = reinterpret_cast<std::uintptr_t>(&job_runner_marker);
  Buffer b;
  procpool::detail::append_job_frame(b, 42, address, callable);
  const Frame f = split(b.view());
  CHECK(f.header.kind == FrameKind::job);
  CHECK(f.header.length == sizeof address + callable.size());
  const auto job = procpool::detail::parse_job(f.header, f.view());
  CHECK(job.job_id == 42);
  CHECK(job.runner_factory == address);
  CHECK(std::vector<std::byte>(job.callable.begin(), job.callable.end()) == callable);
}

TEST_CASE("a job frame with an empty callable parses back with no callable bytes", "[wire]") {
  Buffer b;
  procpool::detail::append_job_frame(b, 7, 0x1234, {});
  const Frame f = split(b.view());
  const auto job = procpool::detail::parse_job(f.header, f.view());
  CHECK(job.job_id == 7);
  CHECK(job.runner_factory == 0x1234);
  CHECK(job.callable.empty());
}

TEST_CASE("a chunk head followed by its items parses back to the same fields", "[wire]") {
  const auto items = encoded_ints({10, 11, 12, 13, 14, 15});
  const Frame f = chunk_frame(1001, 17, 6, {0, 2, 5}, 1, 0, items);
  CHECK(f.header.kind == FrameKind::chunk);
  CHECK(f.header.id == 1001);
  CHECK(f.header.length == sizeof(ChunkHeader) + 3 * sizeof(std::uint32_t) + items.size());
  const auto c = procpool::detail::parse_chunk(f.header, f.view());
  CHECK(c.chunk_id == 1001);
  CHECK(c.job_id == 17);
  CHECK(c.count == 6);
  CHECK(skips_of(c) == std::vector<std::uint32_t>{0, 2, 5});
  CHECK(c.lane == 1);
  CHECK(c.lane_bytes == 0);
  CHECK(std::vector<std::byte>(c.items.begin(), c.items.end()) == items);
}

TEST_CASE("a chunk head with its items in a lane parses back with the lane and no items in the frame", "[wire]") {
  const Frame f = chunk_frame(5, 3, 100, {}, 0, 70000, {});
  CHECK(f.header.length == sizeof(ChunkHeader));
  const auto c = procpool::detail::parse_chunk(f.header, f.view());
  CHECK(c.job_id == 3);
  CHECK(c.count == 100);
  CHECK(c.skip.empty());
  CHECK(c.lane == 0);
  CHECK(c.lane_bytes == 70000);
  CHECK(c.items.empty());
}

TEST_CASE("a chunk with no lane and no items parses back as such", "[wire]") {
  const Frame f = chunk_frame(5, 3, 0, {}, kNoLane, 0, {});
  const auto c = procpool::detail::parse_chunk(f.header, f.view());
  CHECK(c.count == 0);
  CHECK(c.lane == kNoLane);
  CHECK(c.items.empty());
}

TEST_CASE("chunk_head_bytes is the size of the head append_chunk_head builds", "[wire]") {
  const std::vector<std::uint32_t> skip = {1, 4};
  Buffer b;
  procpool::detail::append_chunk_head(b, 1, 1, 5, skip, kNoLane, 0, 123);
  CHECK(b.size() == procpool::detail::chunk_head_bytes(skip.size()));
}

TEST_CASE("a results head with failures, followed by its values, parses back to the same fields", "[wire]") {
  // Items 0..4: 1 and 3 failed; the others' values follow the failure records.
  Buffer failures;
  Encoder fe(failures);
  for (const std::uint32_t i : {1U, 3U}) {
    fe.write_bytes(&i, sizeof i);
    procpool::encode(fe, RemoteException{"std::runtime_error", "item " + std::to_string(i)});
  }
  const auto values = encoded_ints({100, 102, 104});
  Buffer b;
  procpool::detail::append_results_head(b, 77, 5, 2, failures.view(), 12345, 0, values.size());
  b.append(values.data(), values.size());
  const Frame f = split(b.view());
  CHECK(f.header.kind == FrameKind::results);
  CHECK(f.header.id == 77);
  CHECK(f.header.length == sizeof(ResultsHeader) + failures.size() + values.size());
  const auto r = procpool::detail::parse_results(f.view(), 5);
  CHECK(r.header.count == 5);
  CHECK(r.header.failed_count == 2);
  CHECK(r.header.failures_size == failures.size());
  CHECK(r.header.compute_ns == 12345);
  CHECK(r.header.lane_bytes == 0);
  REQUIRE(r.failed.size() == 2);
  CHECK(r.failed[0].first == 1);
  CHECK(r.failed[0].second.type_name == "std::runtime_error");
  CHECK(r.failed[0].second.what == "item 1");
  CHECK(r.failed[1].first == 3);
  CHECK(r.failed[1].second.what == "item 3");
  CHECK(std::vector<std::byte>(r.values.begin(), r.values.end()) == values);
}

TEST_CASE("results left in a lane parse back as the lane's first bytes", "[wire]") {
  std::vector<std::byte> lane(256, std::byte{0x5A});
  Buffer b;
  procpool::detail::append_results_head(b, 8, 3, 0, {}, 9, 200, 0);
  const Frame f = split(b.view());
  CHECK(f.header.length == sizeof(ResultsHeader));
  const auto r = procpool::detail::parse_results(f.view(), 3, lane);
  CHECK(r.header.lane_bytes == 200);
  CHECK(r.failed.empty());
  CHECK(r.values.data() == lane.data());
  CHECK(r.values.size() == 200);
}

TEST_CASE("an init_failed frame parses back to the initializer's exception", "[wire]") {
  Buffer b;
  procpool::detail::append_init_failed_frame(b, RemoteException{"std::logic_error", "no config"});
  const Frame f = split(b.view());
  CHECK(f.header.kind == FrameKind::init_failed);
  const auto why = procpool::detail::parse_init_failed(f.header, f.view());
  CHECK(why.type_name == "std::logic_error");
  CHECK(why.what == "no config");
}

TEST_CASE("the parent's frames come out of the worker-side parser whole and in order, whatever the reads", "[wire]") {
  Buffer stream;
  procpool::detail::append_job_frame(stream, 1, 0xABC, std::vector<std::byte>(5, std::byte{7}));
  const auto items = encoded_ints({1, 2, 3});
  const std::vector<std::uint32_t> skip = {1};
  procpool::detail::append_chunk_head(stream, 2, 1, 3, skip, kNoLane, 0, items.size());
  stream.append(items.data(), items.size());
  procpool::detail::append_wake_frame(stream);
  procpool::detail::append_shutdown_frame(stream);
  for (const std::size_t step : {std::size_t{1}, std::size_t{7}, std::size_t{24}, stream.size()}) {
    INFO("reads of " << step << " bytes");
    procpool::detail::ParentFrameParser parser;
    std::vector<FrameKind> kinds;
    for (std::size_t at = 0; at < stream.size(); at += step) {
      const std::size_t n = std::min(step, stream.size() - at);
      std::memcpy(parser.prepare(n), stream.data() + at, n);
      parser.commit(n, n);
      while (auto frame = parser.next()) {
        const auto& [h, payload] = *frame;
        kinds.push_back(h.kind);
        if (h.kind == FrameKind::job) {
          CHECK(procpool::detail::parse_job(h, payload).callable.size() == 5);
        } else if (h.kind == FrameKind::chunk) {
          const auto c = procpool::detail::parse_chunk(h, payload);
          CHECK(c.count == 3);
          CHECK(skips_of(c) == skip);
          CHECK(c.items.size() == items.size());
        } else {
          CHECK(payload.empty());
        }
      }
    }
    CHECK(parser.pending() == 0);
    CHECK(kinds == std::vector<FrameKind>{FrameKind::job, FrameKind::chunk, FrameKind::wake, FrameKind::shutdown});
  }
}

TEST_CASE("a worker's frames come out of the parent's parser whole and in order, whatever the reads", "[wire]") {
  Buffer stream;
  procpool::detail::append_ready_frame(stream);
  procpool::detail::append_init_failed_frame(stream, RemoteException{"E", "w"});
  procpool::detail::append_results_head(stream, 4, 1, 0, {}, 1, 0, 0);
  for (const std::size_t step : {std::size_t{1}, std::size_t{5}, stream.size()}) {
    INFO("reads of " << step << " bytes");
    procpool::detail::FrameParser parser;
    std::vector<FrameKind> kinds;
    for (std::size_t at = 0; at < stream.size(); at += step) {
      const std::size_t n = std::min(step, stream.size() - at);
      std::memcpy(parser.prepare(n), stream.data() + at, n);
      parser.commit(n, n);
      while (auto frame = parser.next()) kinds.push_back(frame->first.kind);
    }
    CHECK(kinds == std::vector<FrameKind>{FrameKind::ready, FrameKind::init_failed, FrameKind::results});
  }
}

TEST_CASE("the worker's exit codes keep their numbers", "[wire]") {
  CHECK(procpool::detail::worker_exit_code(WorkerExit::finished) == 0);
  CHECK(procpool::detail::worker_exit_code(WorkerExit::initializer_failed) == 3);
  CHECK(procpool::detail::worker_exit_code(WorkerExit::protocol_error) == 4);
}

// ---- malformed frames are rejected ----------------------------------------------------------

TEST_CASE("every truncation of a chunk header is rejected as too short", "[wire]") {
  const Frame whole = chunk_frame(1, 1, 2, {}, kNoLane, 0, {});
  for (std::size_t len = 0; len < sizeof(ChunkHeader); ++len) {
    INFO("payload of " << len << " bytes");
    const std::vector<std::byte> cut(whole.payload.begin(), whole.payload.begin() + static_cast<std::ptrdiff_t>(len));
    const FrameHeader h{FrameKind::chunk, 0, 1, len};
    CHECK_THAT(rejection([&] { (void)procpool::detail::parse_chunk(h, cut); }),
               Catch::Contains("too short for its header"));
  }
}

TEST_CASE("a chunk listing more skipped items than its payload holds is rejected", "[wire]") {
  ChunkHeader ch{1, 10, 3, kNoLane, 0, 0};
  const Frame f = raw_chunk(ch, {1, 2}, 3);  // room for two indices and three stray bytes, not three
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_chunk(f.header, f.view()); }),
             Catch::Contains("lists 3 skipped items"));
}

TEST_CASE("a chunk skipping an item beyond its count is rejected", "[wire]") {
  const Frame f = raw_chunk(ChunkHeader{1, 4, 2, kNoLane, 0, 0}, {1, 4}, 8);
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_chunk(f.header, f.view()); }),
             Catch::Contains("skips item 4 out of order or range (chunk of 4 items)"));
}

TEST_CASE("a chunk whose skipped items are out of order or repeated is rejected", "[wire]") {
  const Frame backwards = raw_chunk(ChunkHeader{1, 9, 2, kNoLane, 0, 0}, {5, 2}, 8);
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_chunk(backwards.header, backwards.view()); }),
             Catch::Contains("skips item 2 out of order"));
  const Frame repeated = raw_chunk(ChunkHeader{1, 9, 2, kNoLane, 0, 0}, {3, 3}, 8);
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_chunk(repeated.header, repeated.view()); }),
             Catch::Contains("skips item 3 out of order"));
}

TEST_CASE("a chunk with items both in a lane and in the frame is rejected", "[wire]") {
  const Frame f = raw_chunk(ChunkHeader{1, 2, 0, 1, 0, 100000}, {}, 16);
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_chunk(f.header, f.view()); }),
             Catch::Contains("both in a lane (100000 bytes) and in the frame (16 bytes)"));
}

TEST_CASE("a chunk with items in a lane but no lane named is rejected", "[wire]") {
  const Frame f = raw_chunk(ChunkHeader{1, 2, 0, kNoLane, 0, 100000}, {}, 0);
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_chunk(f.header, f.view()); }),
             Catch::Contains("in a lane but names no lane"));
}

TEST_CASE("a chunk naming a lane the worker does not have is rejected", "[wire]") {
  const Frame f = raw_chunk(ChunkHeader{1, 2, 0, LaneArea::kLanesPerWorker, 0, 0}, {}, 8);
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_chunk(f.header, f.view()); }),
             Catch::Contains("names lane 2 of 2"));
  // With fewer lanes given, a lower index is out of range too.
  const Frame g = raw_chunk(ChunkHeader{1, 2, 0, 1, 0, 0}, {}, 8);
  CHECK_NOTHROW((void)procpool::detail::parse_chunk(g.header, g.view()));
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_chunk(g.header, g.view(), 1); }),
             Catch::Contains("names lane 1 of 1"));
}

TEST_CASE("a chunk claiming more lane bytes than a lane holds is rejected", "[wire]") {
  const Frame f = raw_chunk(ChunkHeader{1, 2, 0, 0, 0, LaneArea::kLaneBytes + 1}, {}, 0);
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_chunk(f.header, f.view()); }),
             Catch::Contains("bytes of a lane of"));
}

TEST_CASE("a frame whose header length disagrees with its payload is rejected", "[wire]") {
  Frame f = chunk_frame(1, 1, 1, {}, kNoLane, 0, encoded_ints({5}));
  f.header.length += 1;
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_chunk(f.header, f.view()); }),
             Catch::Contains("a chunk frame claims"));
  Buffer b;
  procpool::detail::append_job_frame(b, 1, 0x10, {});
  Frame j = split(b.view());
  j.header.length = 2;
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_job(j.header, j.view()); }),
             Catch::Contains("a job frame claims 2 payload bytes but holds 8"));
}

TEST_CASE("a frame of another kind is rejected by the chunk and job parsers, naming its kind", "[wire]") {
  Buffer b;
  procpool::detail::append_job_frame(b, 1, 0x10, {});
  const Frame job = split(b.view());
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_chunk(job.header, job.view()); }),
             Catch::Contains("expected a chunk frame, got one of kind 1"));
  const Frame chunk = chunk_frame(1, 1, 0, {}, kNoLane, 0, {});
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_job(chunk.header, chunk.view()); }),
             Catch::Contains("expected a job frame, got one of kind 2"));
}

TEST_CASE("a job frame too short for a runner address, or naming none, is rejected", "[wire]") {
  const std::vector<std::byte> four(4);
  const FrameHeader h{FrameKind::job, 0, 1, four.size()};
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_job(h, four); }),
             Catch::Contains("job frame of 4 bytes is too short for a runner address"));
  Buffer b;
  procpool::detail::append_job_frame(b, 1, 0, {});
  const Frame none = split(b.view());
  CHECK_THAT(rejection([&] { (void)procpool::detail::parse_job(none.header, none.view()); }),
             Catch::Contains("names no runner"));
}

TEST_CASE("each parser rejects frames of kinds its sender does not send, and unknown kinds", "[wire]") {
  const auto feed = [](auto& parser, const FrameHeader& h) {
    std::memcpy(parser.prepare(sizeof h), &h, sizeof h);
    parser.commit(sizeof h, sizeof h);
    return rejection([&] { (void)parser.next(); });
  };
  {
    procpool::detail::FrameParser parent_side;
    CHECK_THAT(feed(parent_side, FrameHeader{FrameKind::chunk, 0, 0, 0}),
               Catch::Contains("a worker sent a frame of unknown kind 2"));
  }
  {
    procpool::detail::FrameParser parent_side;
    CHECK_THAT(feed(parent_side, FrameHeader{static_cast<FrameKind>(99), 0, 0, 0}),
               Catch::Contains("a worker sent a frame of unknown kind 99"));
  }
  {
    procpool::detail::ParentFrameParser worker_side;
    CHECK_THAT(feed(worker_side, FrameHeader{FrameKind::results, 0, 0, 0}),
               Catch::Contains("the parent sent a frame of unknown kind 18"));
  }
  {
    procpool::detail::ParentFrameParser worker_side;
    CHECK_THAT(feed(worker_side, FrameHeader{static_cast<FrameKind>(0), 0, 0, 0}),
               Catch::Contains("the parent sent a frame of unknown kind 0"));
  }
}

TEST_CASE("a frame claiming an absurd length is rejected before its payload arrives", "[wire]") {
  const FrameHeader h{FrameKind::results, 0, 1, procpool::detail::kMaxFrameLength + 1};
  procpool::detail::FrameParser parser;
  std::memcpy(parser.prepare(sizeof h), &h, sizeof h);
  parser.commit(sizeof h, sizeof h);
  CHECK(parser.missing() == 0);
  CHECK_THAT(rejection([&] { (void)parser.next(); }),
             Catch::Contains("a worker sent a frame claiming " + std::to_string(h.length) + " bytes"));
  const FrameHeader p{FrameKind::chunk, 0, 1, ~std::uint64_t{0}};
  CHECK_THAT(rejection([&] { procpool::detail::check_frame_header(p, procpool::detail::Sender::parent); }),
             Catch::Contains("the parent sent a frame claiming 18446744073709551615 bytes"));
}

TEST_CASE("malformed results are rejected, naming the problem", "[wire]") {
  SECTION("a truncated results header") {
    const std::vector<std::byte> cut(sizeof(ResultsHeader) - 1);
    CHECK_THAT(rejection([&] { (void)procpool::detail::parse_results(cut, 1); }), Catch::Contains("truncated"));
  }
  SECTION("results for another number of items") {
    Buffer b;
    procpool::detail::append_results_head(b, 1, 3, 0, {}, 0, 0, 0);
    const Frame f = split(b.view());
    CHECK_THAT(rejection([&] { (void)procpool::detail::parse_results(f.view(), 4); }),
               Catch::Contains("results for 3 items, expected 4"));
  }
  SECTION("failure records out of order") {
    Buffer failures;
    Encoder fe(failures);
    for (const std::uint32_t i : {2U, 1U}) {
      fe.write_bytes(&i, sizeof i);
      procpool::encode(fe, RemoteException{"E", "w"});
    }
    Buffer b;
    procpool::detail::append_results_head(b, 1, 3, 2, failures.view(), 0, 0, 0);
    const Frame f = split(b.view());
    CHECK_THAT(rejection([&] { (void)procpool::detail::parse_results(f.view(), 3); }),
               Catch::Contains("names item 1 out of order or range"));
  }
  SECTION("values claiming more of the lane than it holds") {
    Buffer b;
    procpool::detail::append_results_head(b, 1, 1, 0, {}, 0, 65, 0);
    const Frame f = split(b.view());
    const std::vector<std::byte> lane(64);
    CHECK_THAT(rejection([&] { (void)procpool::detail::parse_results(f.view(), 1, lane); }),
               Catch::Contains("results claim 65 bytes of a lane of 64"));
  }
  SECTION("values both in a lane and in the frame") {
    Buffer b;
    procpool::detail::append_results_head(b, 1, 1, 0, {}, 0, 4, 4);
    b.append("abcd", 4);
    const Frame f = split(b.view());
    const std::vector<std::byte> lane(64);
    CHECK_THAT(rejection([&] { (void)procpool::detail::parse_results(f.view(), 1, lane); }),
               Catch::Contains("results both in a lane and in the frame"));
  }
}

// ---- a real worker, fed frames built here ---------------------------------------------------

namespace {

/// worker_main in a forked child, with no lanes, talking over a socket pair.
class ForkedWorker {
 public:
  ForkedWorker() {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    slot_ = std::make_unique<procpool::detail::WorkerSlot>();
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::close(sv[0]);
      procpool::detail::WorkerSetup setup;
      setup.slot = slot_.get();
      ::_exit(procpool::detail::worker_main(sv[1], setup));
    }
    ::close(sv[1]);
    fd_ = sv[0];
  }
  ForkedWorker(const ForkedWorker&) = delete;
  ForkedWorker& operator=(const ForkedWorker&) = delete;
  ~ForkedWorker() {
    if (fd_ >= 0) ::close(fd_);
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      (void)::waitpid(pid_, nullptr, 0);
    }
  }

  void send(const Buffer& b) const {
    std::size_t at = 0;
    while (at < b.size()) {
      const ssize_t n = ::write(fd_, b.data() + at, b.size() - at);
      REQUIRE(n > 0);
      at += static_cast<std::size_t>(n);
    }
  }

  /// The next frame the worker sends; nullopt at end-of-file.
  std::optional<Frame> receive() {
    for (;;) {
      if (auto frame = parser_.next()) {
        Frame f;
        f.header = frame->first;
        f.payload.assign(frame->second.begin(), frame->second.end());
        return f;
      }
      std::byte* dst = parser_.prepare(4096);
      const ssize_t n = ::read(fd_, dst, 4096);
      parser_.commit(4096, n > 0 ? static_cast<std::size_t>(n) : 0);
      if (n <= 0) return std::nullopt;
    }
  }

  /// The worker's exit code (-1 if it did not exit normally).
  int wait_exit() {
    int status = 0;
    REQUIRE(::waitpid(pid_, &status, 0) == pid_);
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  std::unique_ptr<procpool::detail::WorkerSlot> slot_;
  pid_t pid_ = -1;
  int fd_ = -1;
  bool reaped_ = false;
  procpool::detail::FrameParser parser_;
};

/// A plain function: trivially copyable, no callable bytes, the same address in the worker.
int square_or_throw(int x) {
  if (x == 13) throw std::runtime_error("thirteen");
  return x * x;
}

using SquareRunner = procpool::detail::Runner<int (*)(int), int, procpool::detail::CallStyle::invoke>;

void append_square_job(Buffer& out, std::uint64_t job_id) {
  int (*const f)(int) = &square_or_throw;
  procpool::detail::append_job_frame(out, job_id, reinterpret_cast<std::uintptr_t>(&SquareRunner::make),
                                     std::as_bytes(std::span(&f, 1)));
}

}  // namespace

TEST_CASE("a worker runs a chunk built by append_chunk_head and its results parse back", "[wire][worker]") {
  ForkedWorker w;
  auto ready = w.receive();
  REQUIRE(ready);
  CHECK(ready->header.kind == FrameKind::ready);

  Buffer out;
  append_square_job(out, 5);
  const std::vector<int> xs = {2, 3, 13, 4, 5};
  const auto items = encoded_ints(xs);
  const std::vector<std::uint32_t> skip = {1, 4};  // decoded, not run
  procpool::detail::append_chunk_head(out, 900, 5, static_cast<std::uint32_t>(xs.size()), skip, kNoLane, 0,
                                      items.size());
  out.append(items.data(), items.size());
  procpool::detail::append_shutdown_frame(out);
  w.send(out);

  auto results = w.receive();
  REQUIRE(results);
  CHECK(results->header.kind == FrameKind::results);
  CHECK(results->header.id == 900);
  const auto r = procpool::detail::parse_results(results->view(), static_cast<std::uint32_t>(xs.size()));
  REQUIRE(r.failed.size() == 1);
  CHECK(r.failed[0].first == 2);
  CHECK(r.failed[0].second.what == "thirteen");
  Decoder values(r.values);
  CHECK(procpool::decode_as<int>(values) == 4);
  CHECK(procpool::decode_as<int>(values) == 16);
  CHECK(values.remaining() == 0);
  CHECK_FALSE(w.receive());
  CHECK(w.wait_exit() == procpool::detail::worker_exit_code(WorkerExit::finished));
}

TEST_CASE("a worker sent a malformed frame ends with the protocol_error exit code", "[wire][worker]") {
  Buffer out;
  SECTION("a chunk that skips an item beyond its count") {
    append_square_job(out, 1);
    const Frame f = raw_chunk(ChunkHeader{1, 2, 1, kNoLane, 0, 0}, {2}, 0);
    out.append(&f.header, sizeof f.header);
    out.append(f.payload.data(), f.payload.size());
  }
  SECTION("a chunk with items in a lane the worker does not have") {
    append_square_job(out, 1);
    const Frame f = raw_chunk(ChunkHeader{1, 2, 0, 0, 0, 100}, {}, 0);
    out.append(&f.header, sizeof f.header);
    out.append(f.payload.data(), f.payload.size());
  }
  SECTION("a chunk of a job never sent") {
    const auto items = encoded_ints({1});
    procpool::detail::append_chunk_head(out, 3, 77, 1, {}, kNoLane, 0, items.size());
    out.append(items.data(), items.size());
  }
  SECTION("a job frame naming no runner") { procpool::detail::append_job_frame(out, 1, 0, {}); }
  SECTION("a frame of a kind only workers send") { procpool::detail::append_ready_frame(out); }
  SECTION("a frame claiming an absurd length") {
    const FrameHeader h{FrameKind::chunk, 0, 1, procpool::detail::kMaxFrameLength + 1};
    out.append(&h, sizeof h);
  }
  ForkedWorker w;
  REQUIRE(w.receive());  // ready
  w.send(out);
  CHECK(w.wait_exit() == procpool::detail::worker_exit_code(WorkerExit::protocol_error));
}

// ---- the spin-wait --------------------------------------------------------------------------

TEST_CASE("spin_until returns true at once when the condition already holds", "[spin]") {
  int calls = 0;
  CHECK(procpool::detail::spin_until([&] { return ++calls > 0; }, std::chrono::nanoseconds{0}));
  CHECK(calls == 1);
}

TEST_CASE("spin_until gives up once its budget has passed", "[spin]") {
  const auto start = std::chrono::steady_clock::now();
  unsigned calls = 0;
  CHECK_FALSE(procpool::detail::spin_until([&] { return ++calls == 0; }, std::chrono::milliseconds{5}));
  const auto spent = std::chrono::steady_clock::now() - start;
  CHECK(spent >= std::chrono::milliseconds{5});
  CHECK(spent < std::chrono::seconds{5});
  CHECK(calls >= 64);
}

TEST_CASE("spin_until sees a counter another thread moves", "[spin]") {
  std::atomic<std::uint64_t> counter{0};
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds{2});
    counter.store(1, std::memory_order_release);
  });
  const bool changed = procpool::detail::spin_until_changed(counter, 0, std::chrono::seconds{10});
  t.join();
  CHECK(changed);
}

TEST_CASE("spin_until_changed also stops when the flag it watches is set", "[spin]") {
  const std::atomic<std::uint64_t> counter{7};
  const std::atomic<std::uint32_t> flag{1};
  CHECK(procpool::detail::spin_until_changed(counter, 7, std::chrono::seconds{10}, &flag));
  const std::atomic<std::uint32_t> unset{0};
  CHECK_FALSE(procpool::detail::spin_until_changed(counter, 7, std::chrono::milliseconds{1}, &unset));
}
