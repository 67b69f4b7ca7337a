// libFuzzer target for procpool's codec.
//
// The first input byte selects a type; the rest is decoded as that type. DecodeError is an expected
// outcome; anything else (crash, sanitizer report, another exception, a huge allocation) is a bug.
// Whatever decodes is re-encoded and decoded again, and must come back equal.
//
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
//       -I include fuzz/codec_fuzzer.cpp -o /tmp/codec_fuzzer
//   mkdir -p /tmp/corpus && cp fuzz/corpus/codec/* /tmp/corpus/
//   /tmp/codec_fuzzer -max_total_time=180 -malloc_limit_mb=64 /tmp/corpus
#include <procpool/codec.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <unordered_map>
#include <variant>
#include <vector>

namespace fuzz {

enum class Color : std::uint8_t { red, green, blue };

struct Record {  // member serialize
  std::string name;
  std::vector<int> values;
  std::optional<Color> color;
  bool flag = false;
  std::variant<std::monostate, long, std::string> extra;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, values, color, flag, extra);
  }
  bool operator==(const Record&) const = default;
};

struct Node {  // recursive, member serialize
  int value = 0;
  std::vector<Node> children;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value, children);
  }
  bool operator==(const Node&) const = default;
};

struct Labelled {  // free serialize found by ADL
  std::u16string label;
  std::multimap<short, std::deque<char>> index;
  bool operator==(const Labelled&) const = default;
};
template <class Archive>
void serialize(Archive& ar, Labelled& l) {
  ar(l.label, l.index);
}

struct Packed {  // trivially copyable, no hook: raw bytes (no bool / padding-sensitive members)
  std::int32_t a;
  std::uint16_t b[2];
  bool operator==(const Packed&) const = default;
};

using T0 = std::map<std::string, std::vector<int>>;
using T1 = std::variant<int, std::string, std::vector<double>>;
using T2 = std::tuple<std::optional<std::string>, std::set<long>>;
using T3 = std::vector<Record>;
using T4 = std::vector<std::vector<std::string>>;
using T5 = std::unordered_map<int, std::string>;
using T6 = std::tuple<std::chrono::milliseconds, std::chrono::system_clock::time_point, std::chrono::duration<double>>;
using T7 = std::array<bool, 4>;
using T8 = bool;
using T9 = Color;
using T10 = Node;
using T11 = std::tuple<std::vector<bool>, std::multiset<char>, std::list<std::uint64_t>>;
using T12 = std::pair<Labelled, std::vector<Packed>>;
using T13 = std::array<std::variant<std::monostate, char, std::u32string>, 3>;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "codec_fuzzer: %s\n", what);
  std::abort();
}

// Decodes `in` as T; if that works, re-encodes and decodes again. With compare_values the two values must
// be ==; without it (types holding floating point, where NaN != NaN) the two encodings must be identical.
// Unordered containers need compare_values: their iteration order is not a function of their content.
template <class T>
void check(std::span<const std::byte> in, bool compare_values) {
  T first{};
  try {
    procpool::Decoder d(in);
    procpool::decode(d, first);
    if (d.position() + d.remaining() != in.size()) fail("decoder lost track of its position");
  } catch (const procpool::DecodeError&) {
    return;
  }
  const std::vector<std::byte> once = procpool::to_bytes(first);
  T second{};
  try {
    second = procpool::from_bytes<T>(once);
  } catch (const procpool::DecodeError&) {
    fail("re-encoded value failed to decode");
  }
  if (compare_values) {
    if (!(first == second)) fail("round trip changed the value");
  } else {
    const std::vector<std::byte> twice = procpool::to_bytes(second);
    if (once != twice) fail("round trip changed the encoding");
  }
}

}  // namespace fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
  using namespace fuzz;
  try {
    switch (data[0] % 14) {
      case 0: check<T0>(in, true); break;
      case 1: check<T1>(in, false); break;
      case 2: check<T2>(in, true); break;
      case 3: check<T3>(in, true); break;
      case 4: check<T4>(in, true); break;
      case 5: check<T5>(in, true); break;
      case 6: check<T6>(in, false); break;
      case 7: check<T7>(in, true); break;
      case 8: check<T8>(in, true); break;
      case 9: check<T9>(in, true); break;
      case 10: check<T10>(in, true); break;
      case 11: check<T11>(in, true); break;
      case 12: check<T12>(in, true); break;
      case 13: check<T13>(in, true); break;
      default: break;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "codec_fuzzer: unexpected exception: %s\n", e.what());
    std::abort();
  }
  return 0;
}
