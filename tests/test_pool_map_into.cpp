// Pool::map_into: results decoded into the caller's vector, reusing the memory its elements own.
#include <catch2/catch.hpp>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <procpool/pool.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "support.hpp"

using procpool_test::iota_vector;
using procpool_test::square;
using procpool_test::two_workers;
using procpool_test::with_chunk;

namespace {

using Bytes = std::vector<std::uint8_t>;

/// 256 KiB filled with the item's number: large enough for the codec's bulk paths.
Bytes block_of(int i) { return Bytes(std::size_t{256} << 10, static_cast<std::uint8_t>(i)); }

std::string text_of(int i) { return std::string(static_cast<std::size_t>(100 + i), static_cast<char>('a' + i % 26)); }

}  // namespace

TEST_CASE("map_into gives the same results as map, in input order") {
  procpool::Pool pool{two_workers()};
  std::vector<long> out;
  pool.map_into(square, iota_vector(10'000), out);
  CHECK(out == pool.map(square, iota_vector(10'000)));
}

TEST_CASE("map_into decodes large results into the storage the output's elements already own") {
  procpool::Pool pool{two_workers()};
  std::vector<Bytes> out;
  pool.map_into(block_of, iota_vector(16), out, with_chunk(1));
  REQUIRE(out.size() == 16);
  std::vector<const std::uint8_t*> storage;
  for (const Bytes& b : out) storage.push_back(b.data());

  // Again, with other values: every element must keep its memory, and hold the new value.
  const auto shifted = [](int i) { return block_of(i + 100); };
  pool.map_into(shifted, iota_vector(16), out, with_chunk(1));
  REQUIRE(out.size() == 16);
  for (std::size_t i = 0; i < out.size(); ++i) {
    INFO("item " << i);
    CHECK(out[i].data() == storage[i]);
    CHECK(out[i] == block_of(static_cast<int>(i) + 100));
  }
}

TEST_CASE("map_into reuses the storage of strings in the output") {
  procpool::Pool pool{two_workers()};
  std::vector<std::string> out(8, std::string(1000, '-'));
  std::vector<const char*> storage;
  for (const std::string& s : out) storage.push_back(s.data());
  pool.map_into(text_of, iota_vector(8), out);
  for (std::size_t i = 0; i < out.size(); ++i) {
    INFO("item " << i);
    CHECK(out[i] == text_of(static_cast<int>(i)));
    CHECK(out[i].data() == storage[i]);
  }
}

TEST_CASE("map_into resizes the output to the number of inputs, growing it or shrinking it") {
  procpool::Pool pool{two_workers()};
  std::vector<long> out(3, -1);
  pool.map_into(square, iota_vector(100), out);
  CHECK(out == procpool_test::squares(100));
  pool.map_into(square, iota_vector(5), out);
  CHECK(out == std::vector<long>{0, 1, 4, 9, 16});
  pool.map_into(square, std::vector<int>{}, out);
  CHECK(out.empty());
}

TEST_CASE("map_into throws the lowest-index failure and leaves every other result in the output, the failed ones value-initialised") {
  procpool::Pool pool{two_workers()};
  std::vector<std::string> out(20, "stale");
  const auto f = [](int i) {
    if (i == 7 || i == 12) throw std::runtime_error("bad item " + std::to_string(i));
    return text_of(i);
  };
  try {
    pool.map_into(f, iota_vector(20), out, with_chunk(1));
    FAIL("map_into did not throw");
  } catch (const procpool::RemoteError& e) {
    CHECK(e.item() == std::optional<std::size_t>(7));
    CHECK(e.remote_what() == "bad item 7");
  }
  REQUIRE(out.size() == 20);
  for (int i = 0; i < 20; ++i) {
    INFO("item " << i);
    if (i == 7 || i == 12) {
      CHECK(out[static_cast<std::size_t>(i)].empty());  // never a stale value that looks like a result
    } else {
      CHECK(out[static_cast<std::size_t>(i)] == text_of(i));
    }
  }
}

TEST_CASE("map_into reports a worker's crash as a ProcessError and the pool stays usable") {
  procpool::Pool pool{two_workers()};
  std::vector<long> out;
  const auto f = [](int i) {
    if (i == 3) procpool_test::die_by_signal(SIGSEGV);
    return square(i);
  };
  CHECK_THROWS_AS(pool.map_into(f, iota_vector(10), out, with_chunk(1)), procpool::ProcessError);
  REQUIRE(out.size() == 10);
  CHECK(out[3] == 0);
  CHECK(out[9] == 81);
  pool.map_into(square, iota_vector(10), out);
  CHECK(out == procpool_test::squares(10));
}

TEST_CASE("map_into on a terminated pool throws procpool::Error and leaves the output empty") {
  procpool::Pool pool{two_workers()};
  std::vector<long> out(4, 1);
  pool.terminate();
  CHECK_THROWS_AS(pool.map_into(square, iota_vector(10), out), procpool::Error);
  CHECK(out.empty());
}

TEST_CASE("map_into works with a callable that cannot travel, run in fresh workers") {
  procpool::Pool pool{two_workers()};
  const std::string suffix = "-suffix";  // a capture that is not trivially copyable
  std::vector<std::string> out;
  pool.map_into([suffix](int i) { return std::to_string(i) + suffix; }, iota_vector(5), out);
  CHECK(out == std::vector<std::string>{"0-suffix", "1-suffix", "2-suffix", "3-suffix", "4-suffix"});
}
