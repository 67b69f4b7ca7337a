// libFuzzer target over the parent's side of the pool protocol: bytes arriving from a worker are
// untrusted. The input is cut into reads of varying sizes and fed to the FrameParser; every frame
// that comes out is handled as the parent handles it (results parsed, values decoded, from the
// frame or from the chunk's results lane). Only procpool::DecodeError may be thrown; crashes,
// sanitizer reports and other exceptions are bugs.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <procpool/detail/wire.hpp>
#include <string>
#include <vector>

namespace {

using procpool::detail::FrameKind;

void handle(const procpool::detail::FrameHeader& h, std::span<const std::byte> payload,
            std::span<const std::byte> lane) {
  if (h.kind == FrameKind::init_failed) {
    procpool::Decoder d(payload);
    (void)procpool::decode_as<procpool::detail::RemoteException>(d);
    return;
  }
  if (h.kind != FrameKind::results) return;
  // The chunk size the parent expects is whatever the frame id says here, bounded like a real chunk.
  const auto count = static_cast<std::uint32_t>(h.id % 4096);
  // Odd ids stand for chunks that hold a results lane, whose bytes the worker wrote as it pleased.
  const auto parsed = procpool::detail::parse_results(payload, count, h.id % 2 == 1 ? lane : std::span<const std::byte>{});
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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t step = 1 + data[0] % 64;  // how many bytes each simulated read delivers
  ++data;
  --size;
  // The simulated results lane holds the input itself, over and over.
  std::vector<std::byte> lane(4096);
  for (std::size_t i = 0; i < lane.size() && size > 0; ++i) lane[i] = static_cast<std::byte>(data[i % size]);
  procpool::detail::FrameParser parser;
  try {
    for (std::size_t at = 0; at < size; at += step) {
      const std::size_t n = std::min(step, size - at);
      std::byte* dst = parser.prepare(n);
      std::memcpy(dst, data + at, n);
      parser.commit(n, n);
      while (auto frame = parser.next()) {
        try {
          handle(frame->first, frame->second, lane);
        } catch (const procpool::DecodeError&) {
          // A malformed frame: the parent kills that worker; here we go on with the next input.
        }
      }
    }
  } catch (const procpool::DecodeError&) {
    // An impossible header: the parent gives up on that worker.
  }
  return 0;
}
