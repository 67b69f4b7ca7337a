// Tests for procpool/codec.hpp and procpool/detail/buffer.hpp.
#include <catch2/catch.hpp>

#include <procpool/codec.hpp>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <variant>
#include <vector>

namespace {

using procpool::DecodeError;
using procpool::Decoder;
using procpool::Encoder;
using procpool::detail::Buffer;

std::vector<std::byte> bytes_of(std::initializer_list<int> xs) {
  std::vector<std::byte> out;
  for (int x : xs) out.push_back(static_cast<std::byte>(x));
  return out;
}

template <class T>
T round_trip(const T& v) {
  return procpool::from_bytes<T>(procpool::to_bytes(v));
}

// Every strict prefix of a valid encoding must throw DecodeError. Each prefix is copied into its own
// exactly-sized heap allocation so AddressSanitizer catches any read past its end.
template <class T>
void require_every_prefix_throws(const std::vector<std::byte>& full) {
  for (std::size_t len = 0; len < full.size(); ++len) {
    auto prefix = std::make_unique<std::byte[]>(len == 0 ? 1 : len);
    if (len != 0) std::memcpy(prefix.get(), full.data(), len);
    INFO("prefix length " << len << " of " << full.size());
    REQUIRE_THROWS_AS(procpool::from_bytes<T>(std::span<const std::byte>(prefix.get(), len)), DecodeError);
  }
  REQUIRE_NOTHROW((void)procpool::from_bytes<T>(full));
}

std::vector<std::byte> varint_bytes(std::uint64_t v) {
  Buffer b;
  Encoder e(b);
  e.write_varint(v);
  return {b.data(), b.data() + b.size()};
}

// An allocator that records the largest single allocation, to prove counts are validated before reserving.
inline std::size_t g_largest_allocation = 0;
inline std::size_t g_total_allocation = 0;

template <class T>
struct RecordingAllocator {
  using value_type = T;
  RecordingAllocator() = default;
  template <class U>
  RecordingAllocator(const RecordingAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    g_largest_allocation = std::max(g_largest_allocation, n * sizeof(T));
    g_total_allocation += n * sizeof(T);
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept { std::allocator<T>().deallocate(p, n); }
  template <class U>
  bool operator==(const RecordingAllocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace

// ---- user types exercising the three hooks ----

namespace app {

enum class Color : std::uint8_t { red, green, blue };
enum Plain { plain_a = 1, plain_b = 1000 };
enum class Flag : bool { off, on };

struct Point {  // member serialize
  int x = 0;
  std::string label;
  std::vector<double> weights;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x, label, weights);
  }
  bool operator==(const Point&) const = default;
};

struct Tree {  // recursive via member serialize
  int value = 0;
  std::vector<Tree> children;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value, children);
  }
  bool operator==(const Tree&) const = default;
};

struct Pair3 {  // free serialize found by ADL; not trivially copyable
  std::string a;
  long b = 0;
  std::optional<Color> c;
  bool operator==(const Pair3&) const = default;
};
template <class Archive>
void serialize(Archive& ar, Pair3& p) {
  ar(p.a, p.b, p.c);
}

struct Both {  // has member and ADL serialize: the member wins
  int v = 0;
  bool member_used = false;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(v);
    member_used = true;
  }
};
template <class Archive>
void serialize(Archive& ar, Both& b) {
  ar(b.v, b.v);
}

struct Raw {  // trivially copyable, no hook: raw bytes
  std::int32_t a;
  double b;
  char c[3];
  bool operator==(const Raw&) const = default;
};

struct Empty {};

struct RawWithSerialize {  // trivially copyable but has serialize: serialize wins (encodes only `a`)
  std::int32_t a;
  std::int32_t b;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(a);
  }
};

struct Holder {  // not encodable
  std::unique_ptr<int> p;
};

}  // namespace app

namespace foreign {
struct Celsius {  // "a type we do not own": only Codec<T>
  explicit Celsius(double d = 0) : deg(d) {}
  Celsius(const Celsius& o) : deg(o.deg) {}  // not trivially copyable
  Celsius& operator=(const Celsius& o) {
    deg = o.deg;
    return *this;
  }
  double deg;
  bool operator==(const Celsius& o) const { return deg == o.deg; }
};
struct Overridden {  // has a member serialize, but the Codec specialisation takes precedence
  int v = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(v);
  }
};
}  // namespace foreign

template <>
struct procpool::Codec<foreign::Celsius> {
  static void encode(Encoder& e, const foreign::Celsius& c) {
    const auto milli = static_cast<std::int64_t>(std::llround(c.deg * 1000));
    e.write_varint(static_cast<std::uint64_t>(milli));
  }
  static void decode(Decoder& d, foreign::Celsius& c) {
    c.deg = static_cast<double>(static_cast<std::int64_t>(d.read_varint())) / 1000;
  }
};

template <>
struct procpool::Codec<foreign::Overridden> {
  static void encode(Encoder& e, const foreign::Overridden& o) { e(static_cast<std::int64_t>(o.v) * 2); }
  static void decode(Decoder& d, foreign::Overridden& o) {
    std::int64_t twice = 0;
    d(twice);
    o.v = static_cast<int>(twice / 2) + 1;  // +1 proves this path ran
  }
};

// ---- Buffer ----

TEST_CASE("a buffer grows by appending and keeps its bytes", "[buffer]") {
  Buffer b;
  CHECK(b.size() == 0);
  CHECK(b.empty());
  for (int i = 0; i < 1000; ++i) {
    const auto byte = static_cast<std::byte>(i & 0xff);
    b.append(&byte, 1);
  }
  REQUIRE(b.size() == 1000);
  CHECK(b.capacity() >= 1000);
  for (int i = 0; i < 1000; ++i) REQUIRE(b.data()[i] == static_cast<std::byte>(i & 0xff));
  std::byte* p = b.grow(3);
  CHECK(p == b.data() + 1000);
  CHECK(b.size() == 1003);
  CHECK(b.view().size() == 1003);
}

TEST_CASE("clearing a buffer keeps its capacity", "[buffer]") {
  Buffer b;
  b.reserve(500);
  CHECK(b.capacity() >= 500);
  b.resize(300);
  CHECK(b.size() == 300);
  const auto cap = b.capacity();
  b.clear();
  CHECK(b.size() == 0);
  CHECK(b.capacity() == cap);
}

TEST_CASE("erase_front drops a consumed prefix and keeps the rest", "[buffer]") {
  Buffer b;
  const char text[] = "hello world";
  b.append(text, 11);
  b.erase_front(6);
  REQUIRE(b.size() == 5);
  CHECK(std::memcmp(b.data(), "world", 5) == 0);
  b.erase_front(0);
  CHECK(b.size() == 5);
  b.erase_front(99);
  CHECK(b.size() == 0);
}

TEST_CASE("a moved-from buffer is empty and the target owns the bytes", "[buffer]") {
  Buffer a;
  a.append("abc", 3);
  Buffer b(std::move(a));
  CHECK(a.size() == 0);  // NOLINT(bugprone-use-after-move): documented state
  CHECK(a.data() == nullptr);
  REQUIRE(b.size() == 3);
  CHECK(std::memcmp(b.data(), "abc", 3) == 0);
  Buffer c;
  c.append("zz", 2);
  c = std::move(b);
  REQUIRE(c.size() == 3);
  CHECK(std::memcmp(c.data(), "abc", 3) == 0);
  c.resize(1);
  CHECK(c.size() == 1);
}

// ---- scalars ----

TEST_CASE("every arithmetic type survives a round trip", "[codec]") {
  CHECK(round_trip<char>('x') == 'x');
  CHECK(round_trip<signed char>(-5) == -5);
  CHECK(round_trip<unsigned char>(250) == 250);
  CHECK(round_trip<wchar_t>(L'\x263A') == L'\x263A');
  CHECK(round_trip<char8_t>(u8'a') == u8'a');
  CHECK(round_trip<char16_t>(u'\x263A') == u'\x263A');
  CHECK(round_trip<char32_t>(U'\x1F600') == U'\x1F600');
  CHECK(round_trip<short>(-12345) == -12345);
  CHECK(round_trip<unsigned short>(54321) == 54321);
  CHECK(round_trip<int>(std::numeric_limits<int>::min()) == std::numeric_limits<int>::min());
  CHECK(round_trip<unsigned>(4000000000U) == 4000000000U);
  CHECK(round_trip<long>(std::numeric_limits<long>::max()) == std::numeric_limits<long>::max());
  CHECK(round_trip<unsigned long>(123456789012UL) == 123456789012UL);
  CHECK(round_trip<long long>(-1LL) == -1LL);
  CHECK(round_trip<unsigned long long>(~0ULL) == ~0ULL);
  CHECK(round_trip<float>(3.25F) == 3.25F);
  CHECK(round_trip<double>(-1e300) == -1e300);
  CHECK(round_trip<long double>(1.5L) == 1.5L);
  CHECK(std::isnan(round_trip<double>(std::numeric_limits<double>::quiet_NaN())));
  CHECK(round_trip<double>(std::numeric_limits<double>::infinity()) == std::numeric_limits<double>::infinity());
}

TEST_CASE("an int encodes as its four native bytes", "[codec]") {
  const std::int32_t v = 0x01020304;
  const auto b = procpool::to_bytes(v);
  REQUIRE(b.size() == 4);
  CHECK(std::memcmp(b.data(), &v, 4) == 0);
  CHECK(procpool::to_bytes(1.0).size() == 8);
}

TEST_CASE("bools survive a round trip as one byte each", "[codec]") {
  CHECK(round_trip(true) == true);
  CHECK(round_trip(false) == false);
  CHECK(procpool::to_bytes(true) == bytes_of({1}));
  CHECK(procpool::to_bytes(false) == bytes_of({0}));
}

TEST_CASE("a bool byte other than 0 or 1 throws DecodeError", "[codec][errors]") {
  CHECK_THROWS_AS(procpool::from_bytes<bool>(bytes_of({2})), DecodeError);
  CHECK_THROWS_AS(procpool::from_bytes<bool>(bytes_of({0xff})), DecodeError);
  CHECK_THROWS_AS(procpool::from_bytes<app::Flag>(bytes_of({7})), DecodeError);
  CHECK_THROWS_AS((procpool::from_bytes<std::array<bool, 2>>(bytes_of({1, 3}))), DecodeError);
  CHECK_THROWS_AS(procpool::from_bytes<std::vector<bool>>(bytes_of({3, 1, 0, 9})), DecodeError);
  CHECK_THROWS_WITH(procpool::from_bytes<bool>(bytes_of({2})), Catch::Contains("invalid bool"));
}

TEST_CASE("enums survive a round trip as their underlying type", "[codec]") {
  CHECK(round_trip(app::Color::blue) == app::Color::blue);
  CHECK(procpool::to_bytes(app::Color::green) == bytes_of({1}));
  CHECK(round_trip(app::plain_b) == app::plain_b);
  CHECK(procpool::to_bytes(app::plain_b).size() == sizeof(std::underlying_type_t<app::Plain>));
  CHECK(round_trip(app::Flag::on) == app::Flag::on);
  CHECK(round_trip(std::byte{0xab}) == std::byte{0xab});
}

TEST_CASE("durations and time points survive a round trip", "[codec]") {
  using namespace std::chrono;
  CHECK(round_trip(milliseconds(-1234)) == milliseconds(-1234));
  CHECK(round_trip(duration<double>(2.5)) == duration<double>(2.5));
  const auto now = system_clock::now();
  CHECK(round_trip(now) == now);
  const auto steady = steady_clock::now();
  CHECK(round_trip(steady) == steady);
  CHECK(procpool::to_bytes(seconds(1)).size() == sizeof(seconds::rep));
}

// ---- strings and sequences ----

TEST_CASE("strings of every character type survive a round trip", "[codec]") {
  CHECK(round_trip(std::string()).empty());
  CHECK(round_trip(std::string("hello")) == "hello");
  const std::string with_nul("a\0b", 3);
  CHECK(round_trip(with_nul) == with_nul);
  const std::string big(100000, 'z');
  CHECK(round_trip(big) == big);
  CHECK(round_trip(std::wstring(L"wide")) == L"wide");
  CHECK(round_trip(std::u8string(u8"utf8")) == u8"utf8");
  CHECK(round_trip(std::u16string(u"utf16")) == u"utf16");
  CHECK(round_trip(std::u32string(U"utf32")) == U"utf32");
  CHECK(procpool::to_bytes(std::string("abc")) == bytes_of({3, 'a', 'b', 'c'}));
}

TEST_CASE("a vector of ints is one length varint plus one block of bytes", "[codec]") {
  std::vector<int> v(1000);
  for (int i = 0; i < 1000; ++i) v[static_cast<std::size_t>(i)] = i * 7 - 300;
  const auto b = procpool::to_bytes(v);
  REQUIRE(b.size() == 2 + 4000);  // 1000 needs a two-byte varint
  CHECK(std::memcmp(b.data() + 2, v.data(), 4000) == 0);
  CHECK(procpool::from_bytes<std::vector<int>>(b) == v);
}

TEST_CASE("vectors, deques and lists survive a round trip", "[codec]") {
  CHECK(round_trip(std::vector<int>{}).empty());
  CHECK(round_trip(std::vector<double>{1.5, -2}) == std::vector<double>{1.5, -2});
  const std::vector<std::string> words{"a", "", "longer word"};
  CHECK(round_trip(words) == words);
  const std::vector<bool> bits{true, false, true, true, false, false, false, true, true};
  CHECK(round_trip(bits) == bits);
  CHECK(procpool::to_bytes(bits).size() == 1 + bits.size());
  const std::deque<std::string> dq{"x", "yy"};
  CHECK(round_trip(dq) == dq);
  const std::list<short> ls{1, 2, 3};
  CHECK(round_trip(ls) == ls);
  const std::vector<app::Color> colors{app::Color::red, app::Color::blue};
  CHECK(round_trip(colors) == colors);
}

TEST_CASE("arrays and C arrays survive a round trip", "[codec]") {
  const std::array<int, 3> a{1, 2, 3};
  CHECK(round_trip(a) == a);
  CHECK(procpool::to_bytes(a).size() == 12);
  const std::array<bool, 4> flags{true, false, false, true};
  CHECK(round_trip(flags) == flags);
  const std::array<std::string, 2> strs{"p", "q"};
  CHECK(round_trip(strs) == strs);
  CHECK(procpool::to_bytes(std::array<int, 0>{}).empty());

  const int c[4] = {9, 8, 7, 6};
  const auto bytes = procpool::to_bytes(c);
  CHECK(bytes.size() == 16);
  int back[4] = {};
  Decoder d(bytes);
  procpool::decode(d, back);
  CHECK(std::equal(std::begin(c), std::end(c), std::begin(back)));

  const std::string names[2][2] = {{"a", "b"}, {"c", "d"}};
  std::string names_back[2][2];
  const auto nb = procpool::to_bytes(names);
  Decoder d2(nb);
  procpool::decode(d2, names_back);
  CHECK(names_back[1][0] == "c");
  CHECK(d2.remaining() == 0);
}

// ---- product and sum types ----

TEST_CASE("pairs, tuples and optionals survive a round trip", "[codec]") {
  const std::pair<int, std::string> p{7, "seven"};
  CHECK(round_trip(p) == p);
  const std::tuple<int, double, std::string, bool> t{1, 2.5, "three", true};
  CHECK(round_trip(t) == t);
  CHECK(procpool::to_bytes(std::tuple<>{}).empty());
  CHECK(round_trip(std::optional<std::string>{}) == std::nullopt);
  CHECK(round_trip(std::optional<std::string>{"set"}) == std::optional<std::string>{"set"});
  CHECK(procpool::to_bytes(std::optional<int>{}) == bytes_of({0}));
}

TEST_CASE("an optional flag other than 0 or 1 throws DecodeError", "[codec][errors]") {
  CHECK_THROWS_AS(procpool::from_bytes<std::optional<char>>(bytes_of({2, 'a'})), DecodeError);
}

TEST_CASE("variants survive a round trip with the right alternative", "[codec]") {
  using V = std::variant<std::monostate, int, std::string, std::vector<double>>;
  CHECK(round_trip(V{}) == V{});
  CHECK(round_trip(V{42}) == V{42});
  CHECK(round_trip(V{std::string("s")}) == V{std::string("s")});
  CHECK(round_trip(V{std::vector<double>{1, 2}}) == V{std::vector<double>{1, 2}});
  using Same = std::variant<int, int>;
  const Same second(std::in_place_index<1>, 5);
  const auto back = round_trip(second);
  CHECK(back.index() == 1);
  CHECK(std::get<1>(back) == 5);
  CHECK(procpool::to_bytes(std::monostate{}).empty());
}

TEST_CASE("an out-of-range variant index throws DecodeError", "[codec][errors]") {
  using V = std::variant<int, std::string>;
  CHECK_THROWS_AS(procpool::from_bytes<V>(bytes_of({2, 0, 0, 0, 0})), DecodeError);
  CHECK_THROWS_AS(procpool::from_bytes<V>(bytes_of({2})), DecodeError);
  const auto b = bytes_of({2, 1, 'x'});
  Decoder d(b);
  V v;
  CHECK_THROWS_AS(procpool::decode(d, v), DecodeError);
  CHECK_THROWS_WITH(procpool::from_bytes<V>(bytes_of({0x80, 0x01})), Catch::Contains("variant index 128"));
}

namespace {
struct ThrowsOnCopy {
  ThrowsOnCopy() = default;
  ThrowsOnCopy(const ThrowsOnCopy&) { throw 1; }
  ThrowsOnCopy& operator=(const ThrowsOnCopy&) = default;
  template <class Archive>
  void serialize(Archive&) {}
};
}  // namespace

TEST_CASE("encoding a valueless variant throws procpool::Error", "[codec][errors]") {
  std::variant<int, ThrowsOnCopy> v;
  const ThrowsOnCopy t;
  CHECK_THROWS(v.emplace<1>(t));
  REQUIRE(v.valueless_by_exception());
  CHECK_THROWS_AS((void)procpool::to_bytes(v), procpool::Error);
}

// ---- associative containers ----

TEST_CASE("maps and sets of every kind survive a round trip", "[codec]") {
  const std::map<std::string, std::vector<int>> m{{"a", {1}}, {"b", {}}, {"c", {2, 3}}};
  CHECK(round_trip(m) == m);
  const std::multimap<int, std::string> mm{{1, "x"}, {1, "y"}, {0, "z"}};
  CHECK(round_trip(mm) == mm);
  const std::unordered_map<int, std::string> um{{1, "one"}, {2, "two"}, {3, "three"}};
  CHECK(round_trip(um) == um);
  const std::unordered_multimap<int, int> umm{{1, 1}, {1, 2}};
  CHECK(round_trip(umm) == umm);
  const std::set<long> s{5, -3, 9};
  CHECK(round_trip(s) == s);
  const std::multiset<char> ms{'a', 'a', 'b'};
  CHECK(round_trip(ms) == ms);
  const std::unordered_set<std::string> us{"p", "q"};
  CHECK(round_trip(us) == us);
  const std::unordered_multiset<int> ums{4, 4, 4};
  CHECK(round_trip(ums) == ums);
  const std::map<int, int, std::greater<>> rev{{1, 1}, {2, 2}};
  CHECK(round_trip(rev) == rev);
}

TEST_CASE("a duplicate key in a map or set throws DecodeError", "[codec][errors]") {
  CHECK_THROWS_AS((procpool::from_bytes<std::map<char, char>>(bytes_of({2, 'a', '1', 'a', '2'}))), DecodeError);
  CHECK_THROWS_AS((procpool::from_bytes<std::unordered_map<char, char>>(bytes_of({2, 'a', '1', 'a', '2'}))),
                  DecodeError);
  CHECK_THROWS_AS(procpool::from_bytes<std::set<char>>(bytes_of({2, 'a', 'a'})), DecodeError);
  CHECK(procpool::from_bytes<std::multiset<char>>(bytes_of({2, 'a', 'a'})).size() == 2);
}

// ---- nesting and user types ----

TEST_CASE("deeply nested standard types survive a round trip", "[codec]") {
  using Nested =
      std::map<std::string,
               std::vector<std::tuple<std::optional<std::set<long>>, std::variant<int, std::list<std::string>>>>>;
  Nested n;
  n["k"].emplace_back(std::set<long>{1, 2}, std::list<std::string>{"x", "y"});
  n["k"].emplace_back(std::nullopt, 3);
  n["empty"];
  CHECK(round_trip(n) == n);
  const std::vector<std::vector<std::string>> vv{{"a"}, {}, {"b", "c"}};
  CHECK(round_trip(vv) == vv);
}

TEST_CASE("a type with a member serialize survives a round trip", "[codec][user]") {
  const app::Point p{3, "pt", {0.5, 1.5}};
  CHECK(round_trip(p) == p);
  const std::vector<app::Point> ps{p, {}, p};
  CHECK(round_trip(ps) == ps);
  app::Tree t{1, {{2, {}}, {3, {{4, {}}}}}};
  CHECK(round_trip(t) == t);
}

TEST_CASE("a type with a free serialize found by ADL survives a round trip", "[codec][user]") {
  const app::Pair3 p{"adl", -9, app::Color::green};
  CHECK(round_trip(p) == p);
  const std::map<int, app::Pair3> m{{1, p}, {2, {}}};
  CHECK(round_trip(m) == m);
}

TEST_CASE("a Codec specialisation handles a type we do not own", "[codec][user]") {
  const foreign::Celsius c(21.5);
  CHECK(round_trip(c) == c);
  CHECK(procpool::to_bytes(c).size() == 3);  // 21500 as a varint
  const std::vector<foreign::Celsius> cs{foreign::Celsius(1), foreign::Celsius(2)};
  CHECK(round_trip(cs) == cs);
}

TEST_CASE("the hooks take precedence in the documented order", "[codec][user]") {
  // Codec<T> beats member serialize.
  foreign::Overridden o;
  o.v = 10;
  CHECK(round_trip(o).v == 11);
  // Member serialize beats ADL serialize (which would write v twice).
  app::Both b;
  b.v = 4;
  CHECK(procpool::to_bytes(b).size() == sizeof(int));
  const auto back = round_trip(b);
  CHECK(back.v == 4);
  CHECK(back.member_used);
  // Member serialize beats the trivially-copyable fallback.
  const app::RawWithSerialize r{1, 2};
  CHECK(procpool::to_bytes(r).size() == sizeof(std::int32_t));
}

TEST_CASE("a trivially copyable struct without hooks travels as raw bytes", "[codec][user]") {
  const app::Raw r{-4, 2.75, {'a', 'b', 'c'}};
  CHECK(procpool::to_bytes(r).size() == sizeof(app::Raw));
  CHECK(round_trip(r) == r);
  const std::vector<app::Raw> rs{r, r};
  CHECK(procpool::to_bytes(rs).size() == 1 + 2 * sizeof(app::Raw));
  CHECK(round_trip(rs) == rs);
  CHECK(procpool::to_bytes(app::Empty{}).empty());
}

TEST_CASE("the Encodable concept and the bitwise trait say what they should", "[codec]") {
  using procpool::Encodable;
  using procpool::detail::is_bitwise_codec_v;
  CHECK(Encodable<int>);
  CHECK(Encodable<const std::string>);
  CHECK(Encodable<app::Point>);
  CHECK(Encodable<app::Pair3>);
  CHECK(Encodable<foreign::Celsius>);
  CHECK(Encodable<app::Raw>);
  CHECK(Encodable<std::map<std::string, std::vector<app::Point>>>);
  CHECK_FALSE(Encodable<int*>);
  CHECK_FALSE(Encodable<const char*>);
  CHECK_FALSE(Encodable<int app::Raw::*>);
  CHECK_FALSE(Encodable<std::string_view>);
  CHECK_FALSE(Encodable<std::span<int>>);
  CHECK_FALSE(Encodable<std::array<int*, 2>>);
  CHECK_FALSE(Encodable<std::vector<int*>>);
  CHECK_FALSE(Encodable<std::optional<int*>>);
  CHECK_FALSE(Encodable<app::Holder>);
  CHECK_FALSE(Encodable<std::unique_ptr<int>>);
  CHECK_FALSE(Encodable<std::vector<app::Holder>>);

  CHECK(is_bitwise_codec_v<int>);
  CHECK(is_bitwise_codec_v<double>);
  CHECK(is_bitwise_codec_v<app::Color>);
  CHECK(is_bitwise_codec_v<std::byte>);
  CHECK(is_bitwise_codec_v<app::Raw>);
  CHECK(is_bitwise_codec_v<std::array<int, 4>>);
  CHECK(is_bitwise_codec_v<std::chrono::milliseconds>);
  CHECK_FALSE(is_bitwise_codec_v<bool>);
  CHECK_FALSE(is_bitwise_codec_v<app::Flag>);
  CHECK_FALSE(is_bitwise_codec_v<std::array<bool, 4>>);
  CHECK_FALSE(is_bitwise_codec_v<std::string>);
  CHECK_FALSE(is_bitwise_codec_v<app::RawWithSerialize>);
  CHECK_FALSE(is_bitwise_codec_v<app::Empty>);
}

// ---- Encoder / Decoder primitives ----

TEST_CASE("varints use the fewest bytes and survive a round trip at every boundary", "[codec]") {
  CHECK(varint_bytes(0).size() == 1);
  CHECK(varint_bytes(127).size() == 1);
  CHECK(varint_bytes(128).size() == 2);
  CHECK(varint_bytes(16383).size() == 2);
  CHECK(varint_bytes(16384).size() == 3);
  CHECK(varint_bytes(~0ULL).size() == 10);
  for (int shift = 0; shift < 64; ++shift) {
    for (std::uint64_t delta : {0ULL, 1ULL, ~0ULL}) {
      const std::uint64_t v = (std::uint64_t{1} << shift) + delta;
      const auto b = varint_bytes(v);
      Decoder d(b);
      REQUIRE(d.read_varint() == v);
      REQUIRE(d.remaining() == 0);
    }
  }
}

TEST_CASE("an overlong or overflowing varint throws DecodeError", "[codec][errors]") {
  {
    const auto b = bytes_of({0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00});
    Decoder d(b);
    CHECK_THROWS_AS(d.read_varint(), DecodeError);
  }
  {
    const auto b = bytes_of({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02});  // 2^64
    Decoder d(b);
    CHECK_THROWS_AS(d.read_varint(), DecodeError);
  }
  {
    const auto b = bytes_of({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01});  // 2^64-1
    Decoder d(b);
    CHECK(d.read_varint() == ~0ULL);
  }
  {
    const auto b = bytes_of({0x80, 0x80});
    Decoder d(b);
    CHECK_THROWS_AS(d.read_varint(), DecodeError);
  }
}

TEST_CASE("the decoder's raw reads are bounds-checked and advance the position", "[codec]") {
  const auto b = bytes_of({1, 2, 3, 4, 5});
  Decoder d(b);
  std::byte two[2];
  d.read_bytes(two, 2);
  CHECK(two[1] == std::byte{2});
  CHECK(d.position() == 2);
  CHECK(d.remaining() == 3);
  const auto view = d.take(2);
  CHECK(view.size() == 2);
  CHECK(view[0] == std::byte{3});
  CHECK_THROWS_AS(d.take(2), DecodeError);
  CHECK_THROWS_AS(d.read_bytes(two, 2), DecodeError);
  CHECK(d.position() == 4);
  CHECK(d.take(0).empty());
}

TEST_CASE("read_count rejects counts the remaining input cannot hold", "[codec][errors]") {
  {
    const auto b = bytes_of({3, 0, 0, 0, 0, 0, 0});
    Decoder d(b);
    CHECK(d.read_count(2) == 3);
  }
  {
    const auto b = bytes_of({4, 0, 0, 0, 0, 0, 0});
    Decoder d(b);
    CHECK_THROWS_AS(d.read_count(2), DecodeError);
  }
  {
    auto b = varint_bytes(std::uint64_t{1} << 24);
    Decoder d(b);
    CHECK(d.read_count(0) == (std::size_t{1} << 24));
  }
  {
    auto b = varint_bytes((std::uint64_t{1} << 24) + 1);
    Decoder d(b);
    CHECK_THROWS_AS(d.read_count(0), DecodeError);
  }
}

TEST_CASE("the encoder and decoder call operators handle several values in order", "[codec]") {
  Buffer buf;
  Encoder e(buf);
  e(1, std::string("two"), 3.0)(true);
  CHECK(&e.buffer() == &buf);
  int a = 0;
  std::string b;
  double c = 0;
  bool d = false;
  Decoder dec(buf.view());
  dec(a, b, c)(d);
  CHECK(a == 1);
  CHECK(b == "two");
  CHECK(c == 3.0);
  CHECK(d);
  CHECK(dec.remaining() == 0);
  Decoder again(buf.view());
  CHECK(procpool::decode_as<int>(again) == 1);
  CHECK(again.position() == sizeof(int));
}

TEST_CASE("decoding replaces the previous contents of the target", "[codec]") {
  std::vector<std::string> v{"old", "stuff", "here"};
  std::map<int, int> m{{9, 9}};
  std::optional<int> o = 5;
  const auto bytes =
      procpool::to_bytes(std::tuple(std::vector<std::string>{"new"}, std::map<int, int>{{1, 2}}, std::optional<int>{}));
  Decoder d(bytes);
  d(v, m, o);
  CHECK(v == std::vector<std::string>{"new"});
  CHECK(m == std::map<int, int>{{1, 2}});
  CHECK_FALSE(o.has_value());
}

// ---- malformed input ----

TEST_CASE("trailing bytes after a value throw DecodeError", "[codec][errors]") {
  auto b = procpool::to_bytes(std::string("ok"));
  b.push_back(std::byte{0});
  b.push_back(std::byte{0});
  CHECK_THROWS_AS(procpool::from_bytes<std::string>(b), DecodeError);
  CHECK_THROWS_WITH(procpool::from_bytes<std::string>(b), Catch::Contains("2 trailing bytes"));
}

TEST_CASE("every truncation of an encoding throws DecodeError", "[codec][errors]") {
  require_every_prefix_throws<int>(procpool::to_bytes(12345));
  require_every_prefix_throws<std::string>(procpool::to_bytes(std::string("truncate me")));
  require_every_prefix_throws<std::vector<int>>(procpool::to_bytes(std::vector<int>{1, 2, 3, 300}));
  require_every_prefix_throws<std::vector<bool>>(procpool::to_bytes(std::vector<bool>{true, false, true}));
  std::map<std::string, std::vector<int>> m{{"alpha", {1, 2}}, {"beta", {}}, {"gamma", {1 << 20}}};
  require_every_prefix_throws<decltype(m)>(procpool::to_bytes(m));
  using V = std::variant<int, std::string, std::vector<double>>;
  require_every_prefix_throws<V>(procpool::to_bytes(V{std::vector<double>{1, 2}}));
  using T = std::tuple<std::optional<std::string>, std::set<long>, std::chrono::milliseconds>;
  require_every_prefix_throws<T>(procpool::to_bytes(T{"x", {1, 2, 3}, std::chrono::milliseconds(5)}));
  require_every_prefix_throws<app::Point>(procpool::to_bytes(app::Point{1, "p", {2.0}}));
  require_every_prefix_throws<app::Pair3>(procpool::to_bytes(app::Pair3{"q", 2, app::Color::red}));
  require_every_prefix_throws<app::Tree>(procpool::to_bytes(app::Tree{1, {{2, {}}, {3, {}}}}));
  require_every_prefix_throws<foreign::Celsius>(procpool::to_bytes(foreign::Celsius(1000)));
  require_every_prefix_throws<std::array<std::string, 2>>(procpool::to_bytes(std::array<std::string, 2>{"a", "b"}));
  require_every_prefix_throws<std::string>(procpool::to_bytes(std::string(200, 'x')));  // two-byte length
}

TEST_CASE("a huge declared count throws before anything is allocated", "[codec][errors]") {
  const auto huge = varint_bytes(std::uint64_t{1} << 60);
  g_largest_allocation = 0;
  using IntVec = std::vector<int, RecordingAllocator<int>>;
  CHECK_THROWS_AS(procpool::from_bytes<IntVec>(huge), DecodeError);
  using StrVec = std::vector<std::string, RecordingAllocator<std::string>>;
  CHECK_THROWS_AS(procpool::from_bytes<StrVec>(huge), DecodeError);
  CHECK(g_largest_allocation == 0);
  CHECK_THROWS_AS(procpool::from_bytes<std::string>(huge), DecodeError);
  CHECK_THROWS_AS((procpool::from_bytes<std::map<int, int>>(huge)), DecodeError);
  CHECK_THROWS_AS((procpool::from_bytes<std::unordered_map<int, int>>(huge)), DecodeError);
  CHECK_THROWS_AS(procpool::from_bytes<std::vector<app::Point>>(huge), DecodeError);  // unknown element size

  // A count the input could hold for the minimum element size, but then the data is missing:
  // nothing beyond a small multiple of the input may be reserved up front.
  auto lying = varint_bytes(1000);
  lying.resize(lying.size() + 1000, std::byte{1});  // 1000 "present" flags, but no 4 KiB payloads
  using BigElems =
      std::vector<std::optional<std::array<char, 4096>>, RecordingAllocator<std::optional<std::array<char, 4096>>>>;
  g_largest_allocation = 0;
  CHECK_THROWS_AS(procpool::from_bytes<BigElems>(lying), DecodeError);
  // The decoder may reserve ahead at most 16 bytes per input byte plus 64 KiB of slack.
  CHECK(g_largest_allocation <= 16 * lying.size() + 65536);
  CHECK(g_largest_allocation < 1000 * sizeof(std::optional<std::array<char, 4096>>) / 8);

  // Unknown-size elements: the count is capped at 2^24 and nothing proportional to it is reserved.
  auto many = varint_bytes(std::uint64_t{1} << 24);
  using Points = std::vector<app::Point, RecordingAllocator<app::Point>>;
  g_largest_allocation = 0;
  CHECK_THROWS_AS(procpool::from_bytes<Points>(many), DecodeError);
  CHECK(g_largest_allocation <= 16 * many.size() + 65536);
}

namespace {
struct CountedTree {  // recursive; its vectors report their allocations
  int value = 0;
  std::vector<CountedTree, RecordingAllocator<CountedTree>> children;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value, children);
  }
};
}  // namespace

TEST_CASE("nested counts cannot reserve more in total than the input justifies", "[codec][errors]") {
  // 1000 levels, each claiming 2^24 children but holding one; the innermost is cut short.
  Buffer buf;
  Encoder e(buf);
  for (int i = 0; i < 1000; ++i) e(i).write_varint(std::uint64_t{1} << 24);
  g_total_allocation = 0;
  CHECK_THROWS_AS(procpool::from_bytes<CountedTree>(buf.view()), DecodeError);
  // Up-front reservations are capped by the budget; beyond it, one real child per level is allocated as it
  // is decoded (a vector of capacity 1 per level).
  CHECK(g_total_allocation <= 16 * buf.size() + 65536 + 1000 * sizeof(CountedTree));
}

TEST_CASE("elements with empty encodings are capped per decoder, not just per container", "[codec][errors]") {
  // One vector of 2^24 monostates is allowed ...
  CHECK(procpool::from_bytes<std::vector<std::monostate>>(varint_bytes(std::uint64_t{1} << 24)).size() ==
        (std::size_t{1} << 24));
  // ... but 1000 of them in one value would be 16 GiB of elements from 4 KB of input.
  Buffer buf;
  Encoder e(buf);
  e.write_varint(1000);
  for (int i = 0; i < 1000; ++i) e.write_varint(std::uint64_t{1} << 24);
  CHECK_THROWS_WITH(procpool::from_bytes<std::vector<std::vector<std::monostate>>>(buf.view()),
                    Catch::Contains("empty encoding"));
}

namespace {
// The encoding of a chain of app::Tree nodes `depth` levels deep: each level is value + a one-child vector.
std::vector<std::byte> tree_chain_bytes(std::size_t depth) {
  Buffer buf;
  Encoder e(buf);
  for (std::size_t i = 0; i < depth; ++i) e(static_cast<int>(i)).write_varint(1);
  e(-1).write_varint(0);
  return {buf.data(), buf.data() + buf.size()};
}
}  // namespace

TEST_CASE("recursive user types nested too deeply throw DecodeError instead of overflowing the stack",
          "[codec][errors]") {
  const auto ok = procpool::from_bytes<app::Tree>(tree_chain_bytes(1000));
  CHECK(ok.children.size() == 1);
  CHECK(ok.children[0].value == 1);
  CHECK_THROWS_WITH(procpool::from_bytes<app::Tree>(tree_chain_bytes(100000)), Catch::Contains("nested"));
  // The depth is released on the way out, so one decoder can go on decoding after deep values.
  Buffer buf;
  Encoder e(buf);
  for (int i = 0; i < 3; ++i) {
    const auto chain = tree_chain_bytes(1500);
    e.write_bytes(chain.data(), chain.size());
  }
  Decoder d(buf.view());
  for (int i = 0; i < 3; ++i) CHECK(procpool::decode_as<app::Tree>(d).value == 0);
  CHECK(d.remaining() == 0);
}

TEST_CASE("decode errors say what went wrong and where", "[codec][errors]") {
  CHECK_THROWS_WITH(procpool::from_bytes<int>(bytes_of({1, 2})), Catch::Contains("truncated"));
  CHECK_THROWS_WITH(procpool::from_bytes<std::vector<int>>(bytes_of({5, 0})), Catch::Contains("count 5"));
  try {
    (void)procpool::from_bytes<std::string>(bytes_of({9}));
    FAIL("no exception");
  } catch (const procpool::Error& e) {  // DecodeError is a procpool::Error
    CHECK(std::string(e.what()).find("procpool") != std::string::npos);
  }
}
