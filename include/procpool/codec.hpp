// procpool: the binary codec that carries arguments and results between processes.
//
// Values are written in a compact, native-endian binary form (both ends are the same program on the
// same machine: children are forks). Decoding is bounds-checked and throws procpool::DecodeError on
// truncated or corrupt input; it never reads out of bounds and never allocates more than the input
// can justify. See docs/codec.md.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/core.h>

#include "procpool/detail/buffer.hpp"
#include "procpool/error.hpp"

namespace procpool {

class Encoder;
class Decoder;

template <class T>
void encode(Encoder& e, const T& v);
template <class T>
void decode(Decoder& d, T& out);

namespace detail {

inline constexpr std::size_t kMaxVarintBytes = 10;
/// read_count's cap on a count of elements whose encoding may be empty.
inline constexpr std::uint64_t kMaxUnsizedCount = std::uint64_t{1} << 24;
/// How deeply user-defined types (serialize / Codec hooks) may nest while decoding. Only recursive user
/// types can nest without a static bound; this keeps corrupt input from overflowing the stack.
inline constexpr std::size_t kMaxDecodeDepth = 2048;

/// Total bytes the decoder may reserve ahead of decoding (for counts whose elements have no exact size):
/// 16 per input byte plus this slack. Memory beyond it grows only as elements are actually decoded.
inline constexpr std::size_t kReserveSlackBytes = std::size_t{1} << 16;

struct DecoderAccess;

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_decode_error(const std::string& what) {
  throw DecodeError(fmt::format("procpool: cannot decode: {}", what));
}

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_truncated(std::size_t wanted, std::size_t position,
                                                                   std::size_t remaining) {
  throw_decode_error(
      fmt::format("truncated input (needed {} bytes at offset {}, {} remain)", wanted, position, remaining));
}

}  // namespace detail

/// Writes values to a detail::Buffer it does not own. Passed to serialize() functions as the Archive.
class Encoder {
 public:
  /// True: a serialize() function may test `Archive::is_encoder` to write, not read.
  static constexpr bool is_encoder = true;
  /// False: this archive writes.
  static constexpr bool is_decoder = false;

  /// Appends to `out`, which must outlive the Encoder.
  explicit Encoder(detail::Buffer& out) noexcept : out_(&out) {}

  /// Appends n raw bytes.
  void write_bytes(const void* p, std::size_t n) {
    if (n != 0) std::memcpy(out_->grow(n), p, n);
  }

  /// Appends v as an unsigned LEB128 varint (1 to 10 bytes). Used for lengths, counts and indices.
  void write_varint(std::uint64_t v) {
    if (v < 0x80) [[likely]] {
      *out_->grow(1) = static_cast<std::byte>(v);
      return;
    }
    std::byte tmp[detail::kMaxVarintBytes];
    std::size_t n = 0;
    while (v >= 0x80) {
      tmp[n++] = static_cast<std::byte>((v & 0x7f) | 0x80);
      v >>= 7;
    }
    tmp[n++] = static_cast<std::byte>(v);
    write_bytes(tmp, n);
  }

  /// Encodes each value in order.
  template <class... Ts>
  Encoder& operator()(const Ts&... values) {
    (procpool::encode(*this, values), ...);
    return *this;
  }

  /// The buffer written to.
  [[nodiscard]] detail::Buffer& buffer() noexcept { return *out_; }

 private:
  detail::Buffer* out_;
};

/// Reads values from a span of bytes. Every read is bounds-checked; violations throw DecodeError.
class Decoder {
 public:
  /// False: this archive reads.
  static constexpr bool is_encoder = false;
  /// True: a serialize() function may test `Archive::is_decoder` to read, not write.
  static constexpr bool is_decoder = true;

  /// Reads from `in`, whose bytes must outlive the Decoder.
  explicit Decoder(std::span<const std::byte> in) noexcept
      : data_(in.data()),
        size_(in.size()),
        reserve_budget_(size_ > (std::numeric_limits<std::size_t>::max() - detail::kReserveSlackBytes) / 16
                            ? std::numeric_limits<std::size_t>::max()
                            : size_ * 16 + detail::kReserveSlackBytes) {}

  /// Copies the next n bytes to p. Throws DecodeError if fewer than n remain.
  void read_bytes(void* p, std::size_t n) {
    if (n > size_ - pos_) [[unlikely]] {
      detail::throw_truncated(n, pos_, size_ - pos_);
    }
    if (n != 0) std::memcpy(p, data_ + pos_, n);
    pos_ += n;
  }

  /// Returns a view of the next n bytes and skips them. Throws DecodeError if fewer than n remain.
  std::span<const std::byte> take(std::size_t n) {
    if (n > size_ - pos_) [[unlikely]] {
      detail::throw_truncated(n, pos_, size_ - pos_);
    }
    std::span<const std::byte> s(data_ + pos_, n);
    pos_ += n;
    return s;
  }

  /// Reads an unsigned LEB128 varint. Throws DecodeError if truncated, longer than 10 bytes or above 2^64-1.
  std::uint64_t read_varint() {
    if (pos_ < size_) [[likely]] {
      const auto b = static_cast<std::uint8_t>(data_[pos_]);
      if (b < 0x80) {
        ++pos_;
        return b;
      }
    }
    return read_varint_slow();
  }

  /// Reads a count of elements, each of which takes at least min_element_size bytes to encode, and checks
  /// that the remaining input can hold that many (for min_element_size 0: that the count is at most 2^24).
  std::size_t read_count(std::size_t min_element_size) {
    const std::size_t at = pos_;
    const std::uint64_t n = read_varint();
    if (min_element_size == 0) {
      if (n > detail::kMaxUnsizedCount) [[unlikely]] {
        bad_count(n, at, min_element_size);
      }
    } else if (n > remaining() / min_element_size) [[unlikely]] {
      bad_count(n, at, min_element_size);
    }
    return static_cast<std::size_t>(n);
  }

  /// The number of bytes not read yet.
  [[nodiscard]] std::size_t remaining() const noexcept { return size_ - pos_; }
  /// The offset of the next byte to read, from the start of the input.
  [[nodiscard]] std::size_t position() const noexcept { return pos_; }

  /// Decodes each value in order.
  template <class... Ts>
  Decoder& operator()(Ts&... values) {
    (procpool::decode(*this, values), ...);
    return *this;
  }

 private:
  [[gnu::noinline]] std::uint64_t read_varint_slow() {
    const std::size_t start = pos_;
    std::uint64_t result = 0;
    for (std::size_t i = 0; i < detail::kMaxVarintBytes; ++i) {
      if (pos_ >= size_) detail::throw_truncated(1, pos_, 0);
      const auto b = static_cast<std::uint8_t>(data_[pos_++]);
      if (i == detail::kMaxVarintBytes - 1 && b > 1) {
        detail::throw_decode_error(
            fmt::format("varint at offset {} is longer than 10 bytes or does not fit in 64 bits", start));
      }
      result |= static_cast<std::uint64_t>(b & 0x7f) << (7 * i);
      if ((b & 0x80) == 0) return result;
    }
    // Unreachable: the tenth byte either ends the varint or throws above.
    detail::throw_decode_error(fmt::format("varint at offset {} is longer than 10 bytes", start));
  }

  [[noreturn, gnu::cold, gnu::noinline]] void bad_count(std::uint64_t n, std::size_t at,
                                                        std::size_t min_element_size) const {
    if (min_element_size == 0) {
      detail::throw_decode_error(
          fmt::format("count {} at offset {} exceeds the limit of {}", n, at, detail::kMaxUnsizedCount));
    }
    detail::throw_decode_error(
        fmt::format("count {} at offset {} needs at least {} bytes per element but only {} bytes remain", n, at,
                    min_element_size, remaining()));
  }

  friend struct detail::DecoderAccess;

  const std::byte* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
  std::size_t depth_ = 0;             // nesting of user-defined types
  std::size_t reserve_budget_;        // bytes left for speculative reserve()
  std::uint64_t empty_elements_ = 0;  // container elements decoded from zero bytes
};

namespace detail {

/// The decoder's resource accounting, used by the built-in codecs.
struct DecoderAccess {
  /// Grants up to `bytes` of up-front reservation from the decoder's budget; returns what was granted.
  static std::size_t grant_reserve(Decoder& d, std::size_t bytes) noexcept {
    const std::size_t granted = std::min(bytes, d.reserve_budget_);
    d.reserve_budget_ -= granted;
    return granted;
  }

  /// Called for each container element that was decoded from zero bytes: such elements are not paid for by
  /// the input, so their total per decoder is capped like a single count of zero-sized elements.
  static void note_empty_element(Decoder& d) {
    if (++d.empty_elements_ > kMaxUnsizedCount) [[unlikely]] {
      throw_decode_error(fmt::format("more than {} container elements with an empty encoding (at offset {})",
                                     kMaxUnsizedCount, d.pos_));
    }
  }

  static void enter(Decoder& d) {
    if (++d.depth_ > kMaxDecodeDepth) [[unlikely]] {
      --d.depth_;
      throw_decode_error(
          fmt::format("user-defined types nested more than {} levels deep at offset {}", kMaxDecodeDepth, d.pos_));
    }
  }
  static void leave(Decoder& d) noexcept { --d.depth_; }
};

/// Counts nesting of user-defined types while decoding; throws DecodeError past kMaxDecodeDepth.
class DecodeDepthGuard {
 public:
  explicit DecodeDepthGuard(Decoder& d) : d_(d) { DecoderAccess::enter(d_); }
  ~DecodeDepthGuard() { DecoderAccess::leave(d_); }
  DecodeDepthGuard(const DecodeDepthGuard&) = delete;
  DecodeDepthGuard& operator=(const DecodeDepthGuard&) = delete;

 private:
  Decoder& d_;
};

}  // namespace detail

/// Specialisation point for types you do not own. A specialisation provides
///   static void encode(Encoder&, const T&);  static void decode(Decoder&, T&);
/// It takes precedence over everything else. The primary template is deliberately empty.
template <class T, class Enable = void>
struct Codec {};

namespace detail {

/// Built-in codecs for standard types. The primary template recognises nothing.
template <class T>
struct BuiltinCodec {
  static constexpr bool recognized = false;
  static constexpr bool available = false;
  static constexpr bool bitwise = false;
  static constexpr std::size_t min_size = 0;
};

/// Base for built-in codecs: `Available` is false when the template is recognised but an element is not
/// encodable (so the type is rejected instead of falling through to the trivially-copyable fallback).
template <bool Available, std::size_t MinSize, bool Bitwise = false>
struct builtin_traits {
  static constexpr bool recognized = true;
  static constexpr bool available = Available;
  static constexpr bool bitwise = Available && Bitwise;
  static constexpr std::size_t min_size = MinSize;
};

/// Trivially copyable types that hold pointers and are therefore refused.
template <class T>
struct is_pointer_like : std::false_type {};
template <class C, class Tr>
struct is_pointer_like<std::basic_string_view<C, Tr>> : std::true_type {};
template <class T, std::size_t E>
struct is_pointer_like<std::span<T, E>> : std::true_type {};
template <class T>
struct is_pointer_like<std::reference_wrapper<T>> : std::true_type {};

// Poison pill: unqualified `serialize(ar, v)` below finds only functions found by ADL.
void serialize() = delete;

template <class T>
concept has_user_codec = requires(Encoder& e, Decoder& d, const T& cv, T& v) {
  Codec<T>::encode(e, cv);
  Codec<T>::decode(d, v);
};

template <class T>
concept has_member_serialize = requires(Encoder& e, Decoder& d, T& v) {
  v.serialize(e);
  v.serialize(d);
};

template <class T>
concept has_adl_serialize = requires(Encoder& e, Decoder& d, T& v) {
  serialize(e, v);
  serialize(d, v);
};

enum class Kind { none, pointer, user_codec, member, adl, builtin, trivial };

template <class T>
consteval Kind kind_of() {
  // NOLINTNEXTLINE(bugprone-branch-clone): compile-time dispatch; several tests yield Kind::none
  if constexpr (std::is_void_v<T> || std::is_reference_v<T> || std::is_function_v<T>) {
    return Kind::none;
  } else if constexpr (has_user_codec<T>) {
    return Kind::user_codec;
  } else if constexpr (std::is_pointer_v<T> || std::is_member_pointer_v<T> || is_pointer_like<T>::value) {
    return Kind::pointer;
  } else if constexpr (has_member_serialize<T>) {
    return Kind::member;
  } else if constexpr (has_adl_serialize<T>) {
    return Kind::adl;
  } else if constexpr (BuiltinCodec<T>::recognized) {
    return BuiltinCodec<T>::available ? Kind::builtin : Kind::none;
  } else if constexpr (std::is_trivially_copyable_v<T> && !std::is_array_v<T>) {
    return Kind::trivial;
  } else {
    return Kind::none;
  }
}

template <class T>
inline constexpr Kind kind_v = kind_of<std::remove_cv_t<T>>();

constexpr std::size_t sat_add(std::size_t a, std::size_t b) noexcept {
  return a > std::numeric_limits<std::size_t>::max() - b ? std::numeric_limits<std::size_t>::max() : a + b;
}
constexpr std::size_t sat_mul(std::size_t a, std::size_t b) noexcept {
  return (a != 0 && b > std::numeric_limits<std::size_t>::max() / a) ? std::numeric_limits<std::size_t>::max() : a * b;
}

template <class T>
consteval std::size_t min_size_of() {
  constexpr Kind k = kind_of<T>();
  if constexpr (k == Kind::builtin) {
    return BuiltinCodec<T>::min_size;
  } else if constexpr (k == Kind::trivial) {
    return std::is_empty_v<T> ? 0 : sizeof(T);
  } else {
    return 0;  // user-defined or not encodable: unknown, so assume the encoding may be empty
  }
}

template <class T>
consteval bool bitwise_of() {
  constexpr Kind k = kind_of<T>();
  if constexpr (k == Kind::builtin) {
    return BuiltinCodec<T>::bitwise;
  } else if constexpr (k == Kind::trivial) {
    return !std::is_empty_v<T>;
  } else {
    return false;
  }
}

/// The minimum number of bytes any value of T encodes to (0 when unknown).
template <class T>
inline constexpr std::size_t min_size_v = min_size_of<std::remove_cv_t<T>>();

/// True when T is encoded as exactly its sizeof(T) object bytes, so a contiguous range of T is one memcpy.
template <class T>
inline constexpr bool is_bitwise_codec_v = bitwise_of<std::remove_cv_t<T>>();

}  // namespace detail

/// True iff values of T can be encoded and decoded in place.
template <class T>
concept Encodable = (detail::kind_v<T> != detail::Kind::none) && (detail::kind_v<T> != detail::Kind::pointer);

namespace detail {

template <class T>
concept DecodableElement = Encodable<T> && std::default_initializable<T>;

// Dispatch without the user-facing static_asserts (callers have checked Encodable already).
template <class T>
void encode_value(Encoder& e, const T& v);
template <class T>
void decode_value(Decoder& d, T& out);

template <class T>
void encode_elements(Encoder& e, const T* p, std::size_t n) {
  if constexpr (is_bitwise_codec_v<T>) {
    e.write_bytes(p, n * sizeof(T));
  } else {
    for (std::size_t i = 0; i < n; ++i) encode_value(e, p[i]);
  }
}

template <class T>
void decode_elements(Decoder& d, T* p, std::size_t n) {
  if constexpr (is_bitwise_codec_v<T>) {
    d.read_bytes(p, n * sizeof(T));
  } else {
    for (std::size_t i = 0; i < n; ++i) decode_value(d, p[i]);
  }
}

/// How many elements of T to reserve for a validated count n. Reservations come out of a per-decoder budget
/// proportional to the input size, so neither large element types nor nesting (recursive types) can turn a
/// small corrupt input into a large allocation; past the budget, containers grow as elements arrive.
template <class T>
std::size_t reserve_hint(Decoder& d, std::size_t n) noexcept {
  return DecoderAccess::grant_reserve(d, sat_mul(n, sizeof(T))) / sizeof(T);
}

/// Calls decode_one() n times. For elements whose encoding may be empty, elements that really did
/// consume no input are counted against the decoder's cap.
template <std::size_t MinSize, class F>
void decode_n(Decoder& d, std::size_t n, F&& decode_one) {
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (MinSize == 0) {
      const std::size_t before = d.position();
      decode_one();
      if (d.position() == before) DecoderAccess::note_empty_element(d);
    } else {
      decode_one();
    }
  }
}

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_bad_flag(const char* what, unsigned value) {
  throw_decode_error(fmt::format("invalid {} byte {} (expected 0 or 1)", what, value));
}

inline bool decode_flag(Decoder& d, const char* what) {
  unsigned char b;
  d.read_bytes(&b, 1);
  if (b > 1) [[unlikely]] {
    throw_bad_flag(what, b);
  }
  return b != 0;
}

inline void encode_flag(Encoder& e, bool v) { *e.buffer().grow(1) = static_cast<std::byte>(v ? 1 : 0); }

// ---- arithmetic and enums ----

template <class T>
  requires std::is_arithmetic_v<T>
struct BuiltinCodec<T> : builtin_traits<true, std::is_same_v<T, bool> ? 1 : sizeof(T), !std::is_same_v<T, bool>> {
  static void encode(Encoder& e, const T& v) {
    if constexpr (std::is_same_v<T, bool>) {
      encode_flag(e, v);
    } else {
      e.write_bytes(&v, sizeof(T));
    }
  }
  static void decode(Decoder& d, T& out) {
    if constexpr (std::is_same_v<T, bool>) {
      out = decode_flag(d, "bool");
    } else {
      d.read_bytes(&out, sizeof(T));
    }
  }
};

template <class T>
  requires std::is_enum_v<T>
struct BuiltinCodec<T> : builtin_traits<true, BuiltinCodec<std::underlying_type_t<T>>::min_size,
                                        BuiltinCodec<std::underlying_type_t<T>>::bitwise> {
  using U = std::underlying_type_t<T>;
  static void encode(Encoder& e, const T& v) { BuiltinCodec<U>::encode(e, static_cast<U>(v)); }
  static void decode(Decoder& d, T& out) {
    U u;
    BuiltinCodec<U>::decode(d, u);
    out = static_cast<T>(u);
  }
};

// ---- empty and wrapper types ----

template <>
struct BuiltinCodec<std::monostate> : builtin_traits<true, 0> {
  static void encode(Encoder& /*e*/, const std::monostate& /*v*/) {}
  static void decode(Decoder& /*d*/, std::monostate& /*v*/) {}
};

template <class Rep, class Period>
struct BuiltinCodec<std::chrono::duration<Rep, Period>>
    : builtin_traits<Encodable<Rep>, min_size_v<Rep>,
                     is_bitwise_codec_v<Rep> && sizeof(std::chrono::duration<Rep, Period>) == sizeof(Rep)> {
  using D = std::chrono::duration<Rep, Period>;
  static void encode(Encoder& e, const D& v) {
    const Rep r = v.count();
    encode_value(e, r);
  }
  static void decode(Decoder& d, D& out) {
    Rep r{};
    decode_value(d, r);
    out = D(r);
  }
};

template <class Clock, class Dur>
struct BuiltinCodec<std::chrono::time_point<Clock, Dur>>
    : builtin_traits<Encodable<Dur>, min_size_v<Dur>,
                     is_bitwise_codec_v<Dur> && sizeof(std::chrono::time_point<Clock, Dur>) == sizeof(Dur)> {
  using TP = std::chrono::time_point<Clock, Dur>;
  static void encode(Encoder& e, const TP& v) {
    const Dur dur = v.time_since_epoch();
    encode_value(e, dur);
  }
  static void decode(Decoder& d, TP& out) {
    Dur dur{};
    decode_value(d, dur);
    out = TP(dur);
  }
};

template <class T>
struct BuiltinCodec<std::optional<T>> : builtin_traits<DecodableElement<T>, 1> {
  static void encode(Encoder& e, const std::optional<T>& v) {
    encode_flag(e, v.has_value());
    if (v) encode_value(e, *v);
  }
  static void decode(Decoder& d, std::optional<T>& out) {
    if (decode_flag(d, "optional flag")) {
      out.emplace();
      decode_value(d, *out);
    } else {
      out.reset();
    }
  }
};

template <class... Ts>
struct BuiltinCodec<std::variant<Ts...>>
    : builtin_traits<(DecodableElement<Ts> && ...), sat_add(1, std::min({min_size_v<Ts>...}))> {
  using V = std::variant<Ts...>;
  static void encode(Encoder& e, const V& v) {
    if (v.valueless_by_exception()) [[unlikely]] {
      throw Error("procpool: cannot encode a std::variant that is valueless by exception");
    }
    e.write_varint(v.index());
    encode_alternative(e, v, std::index_sequence_for<Ts...>{});
  }
  static void decode(Decoder& d, V& out) {
    const std::size_t at = d.position();
    const std::uint64_t index = d.read_varint();
    if (index >= sizeof...(Ts)) [[unlikely]] {
      throw_decode_error(
          fmt::format("variant index {} at offset {} is out of range ({} alternatives)", index, at, sizeof...(Ts)));
    }
    decode_alternative(d, out, static_cast<std::size_t>(index), std::index_sequence_for<Ts...>{});
  }

 private:
  template <std::size_t... I>
  static void encode_alternative(Encoder& e, const V& v, std::index_sequence<I...> /*indices*/) {
    const std::size_t index = v.index();
    (void)((index == I ? (encode_value(e, *std::get_if<I>(&v)), true) : false) || ...);
  }
  template <std::size_t... I>
  static void decode_alternative(Decoder& d, V& out, std::size_t index, std::index_sequence<I...> /*indices*/) {
    (void)((index == I ? (out.template emplace<I>(), decode_value(d, *std::get_if<I>(&out)), true) : false) || ...);
  }
};

template <class A, class B>
struct BuiltinCodec<std::pair<A, B>>
    : builtin_traits<Encodable<A> && Encodable<B>, sat_add(min_size_v<A>, min_size_v<B>)> {
  static void encode(Encoder& e, const std::pair<A, B>& v) {
    encode_value(e, v.first);
    encode_value(e, v.second);
  }
  static void decode(Decoder& d, std::pair<A, B>& out) {
    decode_value(d, out.first);
    decode_value(d, out.second);
  }
};

template <class... Ts>
struct BuiltinCodec<std::tuple<Ts...>>
    : builtin_traits<(Encodable<Ts> && ...), (std::size_t{0} + ... + min_size_v<Ts>)> {
  static void encode(Encoder& e, const std::tuple<Ts...>& v) {
    std::apply([&e](const auto&... xs) { (encode_value(e, xs), ...); }, v);
  }
  static void decode(Decoder& d, std::tuple<Ts...>& out) {
    std::apply([&d](auto&... xs) { (decode_value(d, xs), ...); }, out);
  }
};

// ---- fixed-size arrays ----

template <class T, std::size_t N>
struct BuiltinCodec<std::array<T, N>>
    : builtin_traits<Encodable<T>, sat_mul(N, min_size_v<T>),
                     N != 0 && is_bitwise_codec_v<T> && sizeof(std::array<T, N>) == N * sizeof(T)> {
  static void encode(Encoder& e, const std::array<T, N>& v) {
    if constexpr (N != 0) encode_elements(e, v.data(), N);
  }
  static void decode(Decoder& d, std::array<T, N>& out) {
    if constexpr (N != 0) decode_elements(d, out.data(), N);
  }
};

template <class T, std::size_t N>
struct BuiltinCodec<T[N]>
    : builtin_traits<Encodable<T>, sat_mul(N, min_size_v<T>), is_bitwise_codec_v<T> && sizeof(T[N]) == N * sizeof(T)> {
  static void encode(Encoder& e, const T (&v)[N]) { encode_elements(e, &v[0], N); }
  static void decode(Decoder& d, T (&out)[N]) { decode_elements(d, &out[0], N); }
};

// ---- sequences ----

/// Fills a contiguous container (vector, basic_string) with n raw elements from `bytes`. Copies
/// straight from the input when it is suitably aligned, so a large value is neither zero-filled
/// first (resize) nor touched twice.
template <class Container>
void assign_bitwise(std::span<const std::byte> bytes, std::size_t n, Container& out) {
  using T = typename Container::value_type;
  if (bytes.size() >= kPrefaultBytes && out.capacity() < n) {
    // Fresh memory for a large value: map its pages in one go rather than fault on each.
    out.clear();
    out.reserve(n);
    prefault_for_write(out.data(), n * sizeof(T));
  }
  if (reinterpret_cast<std::uintptr_t>(bytes.data()) % alignof(T) == 0) {
    const T* first = reinterpret_cast<const T*>(bytes.data());
    out.assign(first, first + n);
  } else {
    out.resize(n);
    if (n != 0) std::memcpy(static_cast<void*>(out.data()), bytes.data(), bytes.size());
  }
}

template <class C, class Tr, class A>
struct BuiltinCodec<std::basic_string<C, Tr, A>> : builtin_traits<is_bitwise_codec_v<C>, 1> {
  using S = std::basic_string<C, Tr, A>;
  static void encode(Encoder& e, const S& v) {
    e.write_varint(v.size());
    e.write_bytes(v.data(), v.size() * sizeof(C));
  }
  static void decode(Decoder& d, S& out) {
    const std::size_t n = d.read_count(sizeof(C));
    assign_bitwise(d.take(n * sizeof(C)), n, out);
  }
};

template <class T, class A>
struct BuiltinCodec<std::vector<T, A>> : builtin_traits<DecodableElement<T>, 1> {
  using V = std::vector<T, A>;
  static void encode(Encoder& e, const V& v) {
    e.write_varint(v.size());
    if constexpr (std::is_same_v<T, bool>) {
      std::byte* p = e.buffer().grow(v.size());
      for (const bool b : v) *p++ = static_cast<std::byte>(b ? 1 : 0);
    } else {
      encode_elements(e, v.data(), v.size());
    }
  }
  static void decode(Decoder& d, V& out) {
    if constexpr (std::is_same_v<T, bool>) {
      const std::size_t n = d.read_count(1);
      const std::size_t at = d.position();
      const std::span<const std::byte> bytes = d.take(n);
      out.clear();
      out.reserve(n);
      for (std::size_t i = 0; i < n; ++i) {
        const auto b = static_cast<unsigned char>(bytes[i]);
        if (b > 1) [[unlikely]] {
          throw_decode_error(
              fmt::format("invalid bool byte {} at offset {} (expected 0 or 1)", static_cast<unsigned>(b), at + i));
        }
        out.push_back(b != 0);
      }
    } else if constexpr (is_bitwise_codec_v<T>) {
      const std::size_t n = d.read_count(sizeof(T));
      assign_bitwise(d.take(n * sizeof(T)), n, out);
    } else {
      const std::size_t n = d.read_count(min_size_v<T>);
      out.clear();
      out.reserve(reserve_hint<T>(d, n));
      decode_n<min_size_v<T>>(d, n, [&] { decode_value(d, out.emplace_back()); });
    }
  }
};

template <class Seq, class T>
void encode_sequence(Encoder& e, const Seq& v) {
  e.write_varint(v.size());
  for (const T& x : v) encode_value(e, x);
}

template <class Seq, class T>
void decode_sequence(Decoder& d, Seq& out) {
  const std::size_t n = d.read_count(min_size_v<T>);
  out.clear();
  decode_n<min_size_v<T>>(d, n, [&] { decode_value(d, out.emplace_back()); });
}

template <class T, class A>
struct BuiltinCodec<std::deque<T, A>> : builtin_traits<DecodableElement<T>, 1> {
  static void encode(Encoder& e, const std::deque<T, A>& v) { encode_sequence<std::deque<T, A>, T>(e, v); }
  static void decode(Decoder& d, std::deque<T, A>& out) { decode_sequence<std::deque<T, A>, T>(d, out); }
};

template <class T, class A>
struct BuiltinCodec<std::list<T, A>> : builtin_traits<DecodableElement<T>, 1> {
  static void encode(Encoder& e, const std::list<T, A>& v) { encode_sequence<std::list<T, A>, T>(e, v); }
  static void decode(Decoder& d, std::list<T, A>& out) { decode_sequence<std::list<T, A>, T>(d, out); }
};

// ---- associative containers ----

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_duplicate_key(std::size_t at) {
  throw_decode_error(fmt::format("duplicate key in a unique-key container (element ending at offset {})", at));
}

template <class M>
void encode_map(Encoder& e, const M& m) {
  e.write_varint(m.size());
  for (const auto& kv : m) {
    encode_value(e, kv.first);
    encode_value(e, kv.second);
  }
}

template <class M, bool Unique, bool Hashed>
void decode_map(Decoder& d, M& out) {
  using K = typename M::key_type;
  using V = typename M::mapped_type;
  constexpr std::size_t min_size = sat_add(min_size_v<K>, min_size_v<V>);
  const std::size_t n = d.read_count(min_size);
  out.clear();
  if constexpr (Hashed) out.reserve(reserve_hint<typename M::value_type>(d, n));
  decode_n<min_size>(d, n, [&] {
    K k{};
    V v{};
    decode_value(d, k);
    decode_value(d, v);
    const std::size_t before = out.size();
    if constexpr (Hashed) {
      out.emplace(std::move(k), std::move(v));
    } else {
      out.emplace_hint(out.end(), std::move(k), std::move(v));
    }
    if constexpr (Unique) {
      if (out.size() == before) [[unlikely]] {
        throw_duplicate_key(d.position());
      }
    }
  });
}

template <class S>
void encode_set(Encoder& e, const S& s) {
  e.write_varint(s.size());
  for (const auto& k : s) encode_value(e, k);
}

template <class S, bool Unique, bool Hashed>
void decode_set(Decoder& d, S& out) {
  using K = typename S::key_type;
  const std::size_t n = d.read_count(min_size_v<K>);
  out.clear();
  if constexpr (Hashed) out.reserve(reserve_hint<K>(d, n));
  decode_n<min_size_v<K>>(d, n, [&] {
    K k{};
    decode_value(d, k);
    const std::size_t before = out.size();
    if constexpr (Hashed) {
      out.emplace(std::move(k));
    } else {
      out.emplace_hint(out.end(), std::move(k));
    }
    if constexpr (Unique) {
      if (out.size() == before) [[unlikely]] {
        throw_duplicate_key(d.position());
      }
    }
  });
}

template <class K, class V>
inline constexpr bool map_ok = (DecodableElement<K> && DecodableElement<V>);

template <class K, class V, class C, class A>
struct BuiltinCodec<std::map<K, V, C, A>> : builtin_traits<map_ok<K, V>, 1> {
  using M = std::map<K, V, C, A>;
  static void encode(Encoder& e, const M& v) { encode_map(e, v); }
  static void decode(Decoder& d, M& out) { decode_map<M, true, false>(d, out); }
};

template <class K, class V, class C, class A>
struct BuiltinCodec<std::multimap<K, V, C, A>> : builtin_traits<map_ok<K, V>, 1> {
  using M = std::multimap<K, V, C, A>;
  static void encode(Encoder& e, const M& v) { encode_map(e, v); }
  static void decode(Decoder& d, M& out) { decode_map<M, false, false>(d, out); }
};

template <class K, class V, class H, class Eq, class A>
struct BuiltinCodec<std::unordered_map<K, V, H, Eq, A>> : builtin_traits<map_ok<K, V>, 1> {
  using M = std::unordered_map<K, V, H, Eq, A>;
  static void encode(Encoder& e, const M& v) { encode_map(e, v); }
  static void decode(Decoder& d, M& out) { decode_map<M, true, true>(d, out); }
};

template <class K, class V, class H, class Eq, class A>
struct BuiltinCodec<std::unordered_multimap<K, V, H, Eq, A>> : builtin_traits<map_ok<K, V>, 1> {
  using M = std::unordered_multimap<K, V, H, Eq, A>;
  static void encode(Encoder& e, const M& v) { encode_map(e, v); }
  static void decode(Decoder& d, M& out) { decode_map<M, false, true>(d, out); }
};

template <class K, class C, class A>
struct BuiltinCodec<std::set<K, C, A>> : builtin_traits<DecodableElement<K>, 1> {
  using S = std::set<K, C, A>;
  static void encode(Encoder& e, const S& v) { encode_set(e, v); }
  static void decode(Decoder& d, S& out) { decode_set<S, true, false>(d, out); }
};

template <class K, class C, class A>
struct BuiltinCodec<std::multiset<K, C, A>> : builtin_traits<DecodableElement<K>, 1> {
  using S = std::multiset<K, C, A>;
  static void encode(Encoder& e, const S& v) { encode_set(e, v); }
  static void decode(Decoder& d, S& out) { decode_set<S, false, false>(d, out); }
};

template <class K, class H, class Eq, class A>
struct BuiltinCodec<std::unordered_set<K, H, Eq, A>> : builtin_traits<DecodableElement<K>, 1> {
  using S = std::unordered_set<K, H, Eq, A>;
  static void encode(Encoder& e, const S& v) { encode_set(e, v); }
  static void decode(Decoder& d, S& out) { decode_set<S, true, true>(d, out); }
};

template <class K, class H, class Eq, class A>
struct BuiltinCodec<std::unordered_multiset<K, H, Eq, A>> : builtin_traits<DecodableElement<K>, 1> {
  using S = std::unordered_multiset<K, H, Eq, A>;
  static void encode(Encoder& e, const S& v) { encode_set(e, v); }
  static void decode(Decoder& d, S& out) { decode_set<S, false, true>(d, out); }
};

// ---- dispatch ----

template <class T>
void encode_value(Encoder& e, const T& v) {
  constexpr Kind k = kind_of<T>();
  if constexpr (k == Kind::user_codec) {
    Codec<T>::encode(e, v);
  } else if constexpr (k == Kind::member) {
    const_cast<T&>(v).serialize(e);  // serialize() must only list fields; it does not modify them when encoding
  } else if constexpr (k == Kind::adl) {
    serialize(e, const_cast<T&>(v));
  } else if constexpr (k == Kind::builtin) {
    BuiltinCodec<T>::encode(e, v);
  } else if constexpr (k == Kind::trivial) {
    if constexpr (!std::is_empty_v<T>) e.write_bytes(std::addressof(v), sizeof(T));
  }
}

template <class T>
void decode_value(Decoder& d, T& out) {
  constexpr Kind k = kind_of<T>();
  if constexpr (k == Kind::user_codec) {
    const DecodeDepthGuard guard(d);
    Codec<T>::decode(d, out);
  } else if constexpr (k == Kind::member) {
    const DecodeDepthGuard guard(d);
    out.serialize(d);
  } else if constexpr (k == Kind::adl) {
    const DecodeDepthGuard guard(d);
    serialize(d, out);
  } else if constexpr (k == Kind::builtin) {
    BuiltinCodec<T>::decode(d, out);
  } else if constexpr (k == Kind::trivial) {
    if constexpr (!std::is_empty_v<T>) d.read_bytes(std::addressof(out), sizeof(T));
  }
}

template <class>
inline constexpr bool dependent_false = false;

}  // namespace detail

// The two diagnostics of encode()/decode() (macros: static_assert needs a string literal).
#define PROCPOOL_DETAIL_POINTER_MESSAGE                                                                      \
  "procpool: pointers do not travel between processes (an address means nothing in another process's "       \
  "memory); encode the pointee instead. std::string_view, std::span and std::reference_wrapper are refused " \
  "for the same reason: use std::string, std::vector or the value itself."
#define PROCPOOL_DETAIL_NOT_ENCODABLE_MESSAGE                                                                \
  "procpool: T (named in the instantiation note) is not encodable. Fix: add a member "                       \
  "`template <class Archive> void serialize(Archive& ar) { ar(field1, field2); }`, or a free "               \
  "`template <class Archive> void serialize(Archive& ar, T& v)` in T's namespace (found by ADL), or "        \
  "specialise `template <> struct procpool::Codec<T> { static void encode(procpool::Encoder&, const T&); "   \
  "static void decode(procpool::Decoder&, T&); };`. Elements of containers, std::optional and std::variant " \
  "must themselves be encodable and default-initialisable."

/// Appends the encoding of v.
template <class T>
void encode(Encoder& e, const T& v) {
  using U = std::remove_cv_t<T>;
  if constexpr (detail::kind_v<U> == detail::Kind::pointer) {
    static_assert(detail::kind_v<U> != detail::Kind::pointer, PROCPOOL_DETAIL_POINTER_MESSAGE);
  } else {
    static_assert(Encodable<U>, PROCPOOL_DETAIL_NOT_ENCODABLE_MESSAGE);
    if constexpr (Encodable<U>) detail::encode_value<U>(e, v);
  }
}

/// Decodes a value into out (replacing its previous contents). Throws DecodeError on bad input.
template <class T>
void decode(Decoder& d, T& out) {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_const_v<T>) {
    static_assert(!std::is_const_v<T>, "procpool: cannot decode into a const object");
  } else if constexpr (detail::kind_v<U> == detail::Kind::pointer) {
    static_assert(detail::kind_v<U> != detail::Kind::pointer, PROCPOOL_DETAIL_POINTER_MESSAGE);
  } else {
    static_assert(Encodable<U>, PROCPOOL_DETAIL_NOT_ENCODABLE_MESSAGE);
    if constexpr (Encodable<U>) detail::decode_value<U>(d, out);
  }
}

#undef PROCPOOL_DETAIL_POINTER_MESSAGE
#undef PROCPOOL_DETAIL_NOT_ENCODABLE_MESSAGE

/// Decodes and returns a T (value-initialised, then decoded into).
template <class T>
[[nodiscard]] T decode_as(Decoder& d) {
  static_assert(std::default_initializable<T>, "procpool::decode_as<T> needs a default-initialisable T");
  if constexpr (std::default_initializable<T>) {
    T v{};
    procpool::decode(d, v);
    return v;
  } else {
    std::abort();
  }
}

/// The encoding of v as a byte vector.
template <class T>
[[nodiscard]] std::vector<std::byte> to_bytes(const T& v) {
  detail::Buffer buf;
  Encoder e(buf);
  procpool::encode(e, v);
  return std::vector<std::byte>(buf.data(), buf.data() + buf.size());
}

/// Decodes a T that must occupy all of bytes; throws DecodeError on bad input or trailing bytes.
template <class T>
[[nodiscard]] T from_bytes(std::span<const std::byte> bytes) {
  Decoder d(bytes);
  T v = procpool::decode_as<T>(d);
  if (d.remaining() != 0) [[unlikely]] {
    detail::throw_decode_error(fmt::format("{} trailing bytes after the value (decoded {} of {} bytes)", d.remaining(),
                                           d.position(), bytes.size()));
  }
  return v;
}

}  // namespace procpool
