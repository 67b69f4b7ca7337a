// procpool::Pool: large items and results travel through lanes of shared memory instead of the
// workers' sockets (detail/lanes.hpp); they must arrive intact whatever path they take, even when
// a worker dies while its lanes hold them.
#include <algorithm>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <fstream>
#include <procpool/pool.hpp>
#include <procpool/process.hpp>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support.hpp"

using procpool_test::die_by_signal;
using procpool_test::iota_vector;
using procpool_test::two_workers;
using procpool_test::with_chunk;

namespace {

using Bytes = std::vector<std::uint8_t>;

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * kKiB;

/// `size` bytes that differ from item to item and from byte to byte, so that bytes of the wrong
/// item, or shifted, or stale, never compare equal.
Bytes pattern(int item, std::size_t size) {
  Bytes b(size);
  for (std::size_t j = 0; j < size; ++j)
    b[j] = static_cast<std::uint8_t>((j * 131 + static_cast<std::size_t>(item) * 7 + j / 4096) & 0xFF);
  return b;
}

/// What the tasks below compute from an input: every byte changed, the order reversed.
Bytes transformed(const Bytes& in) {
  Bytes out(in.rbegin(), in.rend());
  for (auto& x : out) x = static_cast<std::uint8_t>(x ^ 0x5A);
  return out;
}

/// The bytes this process has read so far with read(2) and friends (its sockets included).
std::uint64_t bytes_read_by_this_process() {
  std::ifstream io("/proc/self/io");
  for (std::string key; io >> key;) {
    std::uint64_t value = 0;
    io >> value;
    if (key == "rchar:") return value;
  }
  return 0;
}

/// The sizes of this process's shared anonymous mappings (where a pool's lanes live).
std::vector<std::uint64_t> shared_anonymous_mappings() {
  std::vector<std::uint64_t> sizes;
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find("/dev/zero (deleted)") == std::string::npos) continue;
    std::istringstream fields(line);
    std::string range;
    std::string perms;
    fields >> range >> perms;
    if (perms.size() < 4 || perms[3] != 's') continue;
    const auto dash = range.find('-');
    sizes.push_back(std::stoull(range.substr(dash + 1), nullptr, 16) - std::stoull(range.substr(0, dash), nullptr, 16));
  }
  return sizes;
}

std::vector<Bytes> inputs(int n, std::size_t size) {
  std::vector<Bytes> in;
  for (int i = 0; i < n; ++i) in.push_back(pattern(i, size));
  return in;
}

/// Checks every result against the transformed input, naming the first wrong item.
void check_all_transformed(const std::vector<Bytes>& in, const std::vector<Bytes>& out) {
  REQUIRE(out.size() == in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    INFO("item " << i);
    REQUIRE(out[i] == transformed(in[i]));
  }
}

}  // namespace

TEST_CASE("large results come back through shared memory, not through the parent's reads of the sockets") {
  procpool::Pool pool{two_workers()};
  const auto make = [](int i) { return pattern(i, 512 * kKiB); };
  (void)pool.map(make, iota_vector(4));  // the workers are up and the lanes touched
  const std::uint64_t before = bytes_read_by_this_process();
  const std::vector<Bytes> out = pool.map(make, iota_vector(64));  // 32 MiB of results
  const std::uint64_t read = bytes_read_by_this_process() - before;
  REQUIRE(out.size() == 64);
  for (int i = 0; i < 64; ++i) REQUIRE(out[static_cast<std::size_t>(i)] == pattern(i, 512 * kKiB));
  INFO("the parent read " << read << " bytes from its sockets for 32 MiB of results");
  CHECK(read < 2 * kMiB);
}

TEST_CASE("large items reach the workers through shared memory, not through their reads of the sockets") {
  procpool::Pool pool{two_workers()};
  // Each task answers with what its worker has read so far, after its item arrived.
  const auto bytes_read_so_far = [](const Bytes& item) { return item.empty() ? 0 : bytes_read_by_this_process(); };
  const std::vector<Bytes> in = inputs(64, 512 * kKiB);  // 32 MiB of items
  const std::vector<std::uint64_t> read = pool.map(bytes_read_so_far, in);
  REQUIRE(read.size() == 64);
  for (std::size_t i = 0; i < read.size(); ++i) {
    INFO("item " << i << ": its worker had read " << read[i] << " bytes");
    CHECK(read[i] < 2 * kMiB);
  }
}

TEST_CASE("every large item's result arrives intact while two chunks per worker are in flight") {
  procpool::Pool pool{two_workers()};
  const std::vector<Bytes> in = inputs(96, 300 * kKiB);
  SECTION("one item per chunk") { check_all_transformed(in, pool.map(transformed, in, with_chunk(1))); }
  SECTION("chunks of three items") { check_all_transformed(in, pool.map(transformed, in, with_chunk(3))); }
  SECTION("automatic chunks, three maps in a row over the same lanes") {
    for (int round = 0; round < 3; ++round) check_all_transformed(in, pool.map(transformed, in));
  }
}

TEST_CASE("payloads around the size from which they take a lane arrive intact") {
  procpool::Pool pool{two_workers()};
  std::vector<Bytes> in;
  for (const std::size_t size :
       {64 * kKiB - 64, 64 * kKiB - 9, 64 * kKiB - 8, 64 * kKiB, 64 * kKiB + 1, 64 * kKiB + 4096})
    in.push_back(pattern(static_cast<int>(size % 251), size));
  check_all_transformed(in, pool.map(transformed, in, with_chunk(1)));
  check_all_transformed(in, pool.map(transformed, in));
}

TEST_CASE("an item and a result larger than a lane travel through the socket and arrive intact") {
  procpool::Pool pool{two_workers()};
  const std::vector<Bytes> in = {pattern(1, 20 * kMiB), pattern(2, 100 * kKiB), pattern(3, 17 * kMiB)};
  check_all_transformed(in, pool.map(transformed, in, with_chunk(1)));
  // Small items, one result far larger than a lane: it starts in the lane and moves out of it.
  const auto grow = [](int i) { return i == 1 ? pattern(i, 24 * kMiB) : pattern(i, 200 * kKiB); };
  const std::vector<Bytes> out = pool.map(grow, iota_vector(3), with_chunk(3));
  REQUIRE(out.size() == 3);
  CHECK(out[0] == pattern(0, 200 * kKiB));
  CHECK(out[1] == pattern(1, 24 * kMiB));
  CHECK(out[2] == pattern(2, 200 * kKiB));
}

TEST_CASE("when a worker dies while its lanes hold chunks, the other items run again with their own bytes") {
  procpool::Pool pool{two_workers()};
  const std::vector<Bytes> in = inputs(40, 256 * kKiB);
  // Item 13 kills its worker; the chunks that worker holds (their items in its lanes) are re-run
  // on its replacement, which gets new chunks through the same lanes.
  const auto transformed_unless_13 = [](const Bytes& item) {
    if (item == pattern(13, 256 * kKiB)) die_by_signal(SIGSEGV);
    return transformed(item);
  };
  const auto outcomes = pool.try_map(transformed_unless_13, in, with_chunk(2));
  REQUIRE(outcomes.size() == in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    INFO("item " << i);
    if (i == 13) {
      REQUIRE_FALSE(outcomes[i].has_value());
      CHECK_THROWS_AS(std::rethrow_exception(outcomes[i].error()), procpool::ProcessError);
    } else {
      REQUIRE(outcomes[i].has_value());
      CHECK(outcomes[i].value() == transformed(in[i]));
    }
  }
  // The replacement's lanes work for the next call.
  check_all_transformed(in, pool.map(transformed, in));
}

TEST_CASE("large payloads through submit and imap use the lanes and arrive intact") {
  procpool::Pool pool{two_workers()};
  const std::vector<Bytes> in = inputs(12, 400 * kKiB);
  auto future = pool.submit(transformed, in[5]);
  CHECK(future.get() == transformed(in[5]));
  std::size_t i = 0;
  for (auto&& out : pool.imap(transformed, in)) {
    INFO("item " << i);
    REQUIRE(i < in.size());
    CHECK(out == transformed(in[i]));
    ++i;
  }
  CHECK(i == in.size());
}

TEST_CASE("processes the caller forks after a pool started do not inherit the pool's lanes") {
  // The lanes of two workers: two pairs of 16 MiB lanes each, one mapping.
  const auto count_lanes = [](const std::vector<std::uint64_t>& sizes) {
    return std::count(sizes.begin(), sizes.end(), std::uint64_t{2 * 4 * 16 * kMiB});
  };
  const auto before = count_lanes(shared_anonymous_mappings());
  procpool::Pool pool{two_workers()};
  REQUIRE(count_lanes(shared_anonymous_mappings()) == before + 1);
  procpool::Process child{[] { return shared_anonymous_mappings(); }};
  child.start();
  CHECK(count_lanes(child.get()) == before);
}
