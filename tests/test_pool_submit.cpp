// procpool::Pool::submit and procpool::Future: values, void tasks, failures, waiting, moving.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <optional>
#include <procpool/pool.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using procpool_test::two_workers;

namespace procpool_test_types {

/// A user-defined exception type, to check the type name that travels back.
struct LedgerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace procpool_test_types

namespace {

int add(int a, int b) { return a + b; }

/// A path for a file a task writes, unique to this process.
std::string temp_path(const std::string& tag) {
  return "/tmp/procpool-test-submit-" + std::to_string(::getpid()) + "-" + tag;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("submitting add with 2 and 3 gives a Future whose get() is 5") {
  procpool::Pool pool{two_workers()};
  procpool::Future<int> f = pool.submit(add, 2, 3);
  REQUIRE(f.valid());
  const int five = f.get();
  CHECK(five == 5);
}

TEST_CASE("submit carries arguments of several types and a string result") {
  procpool::Pool pool{two_workers()};
  auto f = pool.submit(
      [](const std::string& word, int times, std::vector<int> extra) {
        std::string r;
        for (int i = 0; i < times; ++i) r += word;
        for (int e : extra) r += std::to_string(e);
        return r;
      },
      std::string("ab"), 3, std::vector<int>{4, 5});
  STATIC_REQUIRE(std::is_same_v<decltype(f), procpool::Future<std::string>>);
  CHECK(f.get() == "ababab45");
}

TEST_CASE("a void task runs before its Future's get() returns") {
  procpool::Pool pool{two_workers()};
  const std::string path = temp_path("void");
  std::remove(path.c_str());
  procpool::Future<void> f = pool.submit(
      [](const std::string& where, int value) {
        std::ofstream out(where);
        out << "value=" << value;
      },
      path, 42);
  REQUIRE(f.valid());
  f.get();
  CHECK_FALSE(f.valid());
  CHECK(read_file(path) == "value=42");
  std::remove(path.c_str());
}

TEST_CASE("a void task that throws makes get() throw RemoteError") {
  procpool::Pool pool{two_workers()};
  procpool::Future<void> f = pool.submit(
      [](int x) {
        if (x > 0) throw std::runtime_error("void task failed");
      },
      1);
  try {
    f.get();
    FAIL("get() did not throw");
  } catch (const procpool::RemoteError& e) {
    CHECK(e.remote_what() == "void task failed");
    CHECK(e.type_name() == "std::runtime_error");
  }
}

TEST_CASE("10k submits followed by 10k gets all give the right results") {
  procpool::Pool pool{two_workers()};
  constexpr int kN = 10'000;
  std::vector<procpool::Future<long>> futures;
  futures.reserve(kN);
  for (int i = 0; i < kN; ++i)
    futures.push_back(pool.submit([](int a, long b) { return a * 3 + b; }, i, long{i} * 1000));
  std::size_t wrong = 0;
  for (int i = 0; i < kN; ++i)
    if (futures[static_cast<std::size_t>(i)].get() != long{i} * 1003) ++wrong;
  CHECK(wrong == 0);
}

TEST_CASE("futures are movable and can be stored in a vector and got in any order") {
  STATIC_REQUIRE(std::is_nothrow_move_constructible_v<procpool::Future<int>>);
  STATIC_REQUIRE(std::is_nothrow_move_assignable_v<procpool::Future<int>>);
  procpool::Pool pool{two_workers()};
  std::vector<procpool::Future<int>> futures;
  for (int i = 0; i < 20; ++i) {
    procpool::Future<int> f = pool.submit(add, i, 100);
    futures.push_back(std::move(f));
    CHECK_FALSE(f.valid());  // NOLINT(bugprone-use-after-move): moved-from is documented as invalid
  }
  procpool::Future<int> moved = std::move(futures[7]);
  CHECK_FALSE(futures[7].valid());
  CHECK(moved.valid());
  CHECK(moved.get() == 107);
  for (int i = 19; i >= 0; --i) {
    if (i == 7) continue;
    CHECK(futures[static_cast<std::size_t>(i)].get() == i + 100);
  }
  procpool::Future<int> assigned;
  CHECK_FALSE(assigned.valid());
  assigned = pool.submit(add, 1, 1);
  CHECK(assigned.get() == 2);
}

TEST_CASE("get() twice throws procpool::Error and valid() is false after get()") {
  procpool::Pool pool{two_workers()};
  procpool::Future<int> f = pool.submit(add, 20, 22);
  CHECK(f.valid());
  CHECK(f.get() == 42);
  CHECK_FALSE(f.valid());
  CHECK_THROWS_AS(f.get(), procpool::Error);
  CHECK_THROWS_AS(f.ready(), procpool::Error);
  CHECK_THROWS_AS(f.wait(), procpool::Error);

  procpool::Future<int> empty;
  CHECK_THROWS_AS(empty.get(), procpool::Error);
}

TEST_CASE("wait_for times out on a sleeping task and then succeeds") {
  procpool::Pool pool{two_workers()};
  procpool::Future<int> f = pool.submit(
      [](int ms) {
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        return ms;
      },
      400);
  // The task sleeps 400 ms, so a 20 ms wait cannot see it finish.
  CHECK_FALSE(f.wait_for(20ms));
  CHECK_FALSE(f.ready());
  CHECK(f.valid());
  CHECK(f.wait_for(30s));
  CHECK(f.ready());
  CHECK(f.get() == 400);
}

TEST_CASE("ready() is false while a task runs and true once it finished") {
  procpool::Pool pool{two_workers()};
  procpool::Future<int> slow = pool.submit(
      [](int x) {
        std::this_thread::sleep_for(300ms);
        return x;
      },
      9);
  CHECK_FALSE(slow.ready());
  slow.wait();
  CHECK(slow.ready());
  CHECK(slow.ready());  // asking again does not take the value
  CHECK(slow.get() == 9);
}

TEST_CASE("a task that throws makes get() throw RemoteError with its type name and message") {
  procpool::Pool pool{two_workers()};
  auto f = pool.submit(
      [](int balance) -> int {
        if (balance < 0) throw procpool_test_types::LedgerError("negative balance " + std::to_string(balance));
        return balance;
      },
      -5);
  try {
    (void)f.get();
    FAIL("get() did not throw");
  } catch (const procpool::RemoteError& e) {
    CHECK(e.type_name() == "procpool_test_types::LedgerError");
    CHECK(e.remote_what() == "negative balance -5");
    CHECK_THAT(std::string(e.what()), Catch::Matchers::Contains("negative balance -5"));
    CHECK_THAT(std::string(e.what()), Catch::Matchers::Contains("procpool_test_types::LedgerError"));
  }
  CHECK_FALSE(f.valid());
  // Other tasks are unaffected.
  CHECK(pool.submit(add, 1, 2).get() == 3);
}

TEST_CASE("futures of lambdas capturing different ints each get their own lambda's result") {
  procpool::Pool pool{two_workers()};
  const auto adder = [](int k) { return [k](int x) { return x + k; }; };
  const auto multiplier = [](int k) { return [k](int x) { return x * k; }; };
  std::vector<procpool::Future<int>> sums;
  std::vector<procpool::Future<int>> products;
  for (int k = 0; k < 30; ++k) {
    sums.push_back(pool.submit(adder(k * 10), 1000));
    products.push_back(pool.submit(multiplier(k), 7));
  }
  for (int k = 0; k < 30; ++k) {
    INFO("k = " << k);
    CHECK(sums[static_cast<std::size_t>(k)].get() == 1000 + k * 10);
    CHECK(products[static_cast<std::size_t>(k)].get() == 7 * k);
  }
}

TEST_CASE("callables used one after another, more of them than the pool remembers, each run as themselves when used again") {
  // Idle jobs are remembered (a worker keeps the callable it holds) and the oldest forgotten
  // beyond a bound: a stale or mixed-up job would show as a wrong sum.
  procpool::Pool pool{two_workers()};
  const auto adder = [](int k) { return [k](int x) { return x + k; }; };
  for (int round = 0; round < 3; ++round) {
    for (int k = 0; k < 40; ++k) {
      INFO("round " << round << ", k = " << k);
      REQUIRE(pool.submit(adder(k), 1000).get() == 1000 + k);
      REQUIRE(pool.map(adder(k), std::vector{1, 2}) == std::vector{1 + k, 2 + k});
    }
  }
}

TEST_CASE("a task submitted after the workers fell asleep runs, and so does one after a crash, at every idle gap") {
  // A small chunk for an idle worker travels through shared memory; one that fell asleep in
  // poll must be woken for it, and a chunk left there by a worker that died must not reach
  // its replacement.
  procpool::Pool pool{two_workers()};
  const auto crash_at_minus_one = [](int x) {
    if (x == -1) {
      std::signal(SIGSEGV, SIG_DFL);
      std::raise(SIGSEGV);
    }
    return x * 3;
  };
  for (const auto gap : {0ms, 1ms, 5ms, 30ms}) {
    for (int i = 0; i < 5; ++i) {
      INFO("gap " << gap.count() << " ms, round " << i);
      std::this_thread::sleep_for(gap);
      REQUIRE(pool.submit(crash_at_minus_one, i).get() == i * 3);
      std::this_thread::sleep_for(gap);
      auto crashed = pool.submit(crash_at_minus_one, -1);
      REQUIRE_THROWS_AS(crashed.get(), procpool::ProcessError);
      std::this_thread::sleep_for(gap);
      REQUIRE(pool.submit(crash_at_minus_one, i + 100).get() == (i + 100) * 3);
    }
  }
}

TEST_CASE("a Future that outlives its Pool still delivers its value") {
  procpool::Future<std::string> f;
  procpool::Future<int> g;
  {
    procpool::Pool pool{two_workers()};
    f = pool.submit(
        [](int x) {
          std::this_thread::sleep_for(100ms);
          return "late " + std::to_string(x);
        },
        3);
    g = pool.submit(add, 40, 2);
  }  // graceful: the pool finishes the submitted work before it stops
  REQUIRE(f.valid());
  CHECK(f.ready());
  CHECK(f.get() == "late 3");
  CHECK(g.get() == 42);
}

TEST_CASE("a task's value is never handed out moved-from through a copy of its Future") {
  // Future<R>::get() moves the value out of the state it shares with any copy, and documents that
  // the result is then taken. Either Future is move-only (like std::future; nothing to run here),
  // or a copy's get() must throw procpool::Error or give the whole value again, never a
  // moved-from (empty) string.
  procpool::Pool pool{two_workers()};
  const std::string expected(100, 'q');
  auto f = pool.submit([](int n) { return std::string(static_cast<std::size_t>(n), 'q'); }, 100);
  const auto check_copy = [&expected](auto& future) {
    using Fut = std::remove_cvref_t<decltype(future)>;
    if constexpr (std::is_copy_constructible_v<Fut>) {
      Fut copy = future;
      CHECK(future.get() == expected);
      CHECK_FALSE(future.valid());
      std::optional<std::string> again;
      try {
        again = copy.get();
      } catch (const procpool::Error&) {
        // Taken once already: refusing is right.
      }
      if (again) CHECK(*again == expected);
    } else {
      CHECK(future.get() == expected);
    }
  };
  check_copy(f);
}
