// Time limits per call: MapOptions::task_timeout (per item, overriding the pool's),
// MapOptions::timeout (a deadline for the whole call), and TaskOptions for submit.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <procpool/pool.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;

namespace {

/// Sleeps `ms` milliseconds; returns it.
int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

int twice(int x) { return 2 * x; }

template <class T>
bool is_timeout(const procpool::Outcome<T>& o) {
  if (o.has_value()) return false;
  try {
    std::rethrow_exception(o.error());
  } catch (const procpool::TimeoutError&) {
    return true;
  } catch (...) {
    return false;
  }
}

}  // namespace

TEST_CASE("MapOptions::task_timeout fails only the slow item with TimeoutError, and the call goes on") {
  procpool::Pool pool{procpool_test::two_workers()};
  procpool::MapOptions options;
  options.chunk_size = 1;
  options.task_timeout = 300ms;
  const auto outcomes = pool.try_map(sleep_ms, std::vector{1, 20'000, 2, 3}, options);
  REQUIRE(outcomes.size() == 4);
  CHECK(outcomes[0].value() == 1);
  CHECK(is_timeout(outcomes[1]));
  CHECK(outcomes[2].value() == 2);
  CHECK(outcomes[3].value() == 3);
  try {
    std::rethrow_exception(outcomes[1].error());
  } catch (const procpool::TimeoutError& e) {
    CHECK_THAT(e.what(), Catch::Contains("item 1 ran longer than the task timeout of 300 ms"));
    CHECK(e.item() == 1);
  }
}

TEST_CASE("MapOptions::task_timeout overrides the pool's for one call only") {
  procpool::PoolOptions o = procpool_test::two_workers();
  o.task_timeout = 150ms;
  procpool::Pool pool{o};
  procpool::MapOptions generous;
  generous.task_timeout = 5s;
  CHECK(pool.map(sleep_ms, std::vector{400}, generous) == std::vector{400});
  CHECK_THROWS_AS(pool.map(sleep_ms, std::vector{400}), procpool::TimeoutError);
}

TEST_CASE("MapOptions::timeout fails what has not finished by the deadline, kills what runs, and the pool goes on") {
  procpool::Pool pool{procpool_test::two_workers()};
  const std::vector<pid_t> before = pool.worker_pids();
  procpool::MapOptions options;
  options.chunk_size = 1;
  options.timeout = 700ms;
  const std::vector<int> work(12, 250);  // 1.5 s of work on two workers: about half finishes
  const auto start = std::chrono::steady_clock::now();
  const auto outcomes = pool.try_map(sleep_ms, work, options);
  const auto took = std::chrono::steady_clock::now() - start;
  int values = 0;
  int timeouts = 0;
  for (const auto& o : outcomes) {
    if (o.has_value())
      ++values;
    else if (is_timeout(o))
      ++timeouts;
  }
  CHECK(values + timeouts == 12);
  CHECK(values >= 2);
  CHECK(timeouts >= 2);
  CHECK(took < 5s);
  try {
    std::rethrow_exception(outcomes.back().error());
  } catch (const procpool::TimeoutError& e) {
    CHECK_THAT(e.what(), Catch::Contains("had not finished when its call's timeout of 700 ms passed"));
  }
  CHECK(pool.map(twice, std::vector{1, 2, 3}) == std::vector{2, 4, 6});
  CHECK(pool.worker_pids() != before);  // the workers that ran items past the deadline were replaced
}

TEST_CASE("map with a timeout that passes throws TimeoutError") {
  procpool::Pool pool{procpool_test::two_workers()};
  procpool::MapOptions options;
  options.timeout = 200ms;
  CHECK_THROWS_AS(pool.map(sleep_ms, std::vector{10'000, 10'000}, options), procpool::TimeoutError);
  CHECK(pool.map(twice, std::vector{4}) == std::vector{8});
}

TEST_CASE("a call that finishes before its timeout is not affected by it") {
  procpool::Pool pool{procpool_test::two_workers()};
  procpool::MapOptions options;
  options.timeout = 10s;
  CHECK(pool.map(twice, procpool_test::iota_vector(1000), options).size() == 1000);
  // Its deadline passing later changes nothing for the pool.
  std::this_thread::sleep_for(50ms);
  CHECK(pool.map(twice, std::vector{1}) == std::vector{2});
}

TEST_CASE("imap with a timeout ends with TimeoutError after the outcomes it has") {
  procpool::Pool pool{procpool_test::two_workers()};
  procpool::MapOptions options;
  options.chunk_size = 1;
  options.timeout = 500ms;
  std::vector<int> work(40, 100);
  int got = 0;
  bool timed_out = false;
  auto results = pool.imap(sleep_ms, work, options);
  try {
    while (results.next_outcome()) ++got;
  } catch (const procpool::TimeoutError&) {
    timed_out = true;
  }
  CHECK(timed_out);
  CHECK(got < 40);
}

TEST_CASE("submit with TaskOptions::task_timeout fails a task that runs too long") {
  procpool::Pool pool{procpool_test::two_workers()};
  auto slow = pool.submit(procpool::TaskOptions{.task_timeout = 200ms}, sleep_ms, 20'000);
  auto quick = pool.submit(procpool::TaskOptions{.task_timeout = 5s}, sleep_ms, 10);
  CHECK_THROWS_AS(slow.get(), procpool::TimeoutError);
  CHECK(quick.get() == 10);
}

TEST_CASE("submit's TaskOptions::timeout counts the time the task waits in the queue") {
  procpool::Pool pool{procpool_test::with_workers(1)};
  auto blocker = pool.submit(sleep_ms, 600);
  auto waiting = pool.submit(procpool::TaskOptions{.timeout = 200ms}, sleep_ms, 1);
  CHECK_THROWS_AS(waiting.get(), procpool::TimeoutError);
  CHECK(blocker.get() == 600);
}

TEST_CASE("a deadline that passes while a worker is dying gives every item exactly one outcome") {
  procpool::Pool pool{procpool_test::two_workers()};
  for (int round = 0; round < 4; ++round) {
    procpool::MapOptions options;
    options.chunk_size = 1;
    options.timeout = std::chrono::milliseconds(150 + 10 * round);
    // Item 0 kills its own worker around the deadline; the others sleep past it.
    const auto outcomes = pool.try_map(
        [](int ms) {
          if (ms < 0) {
            std::this_thread::sleep_for(std::chrono::milliseconds(-ms));
            ::raise(SIGKILL);
          }
          return sleep_ms(ms);
        },
        std::vector{-150, 400, 400, 1}, options);
    REQUIRE(outcomes.size() == 4);
    CHECK_FALSE(outcomes[0].has_value());
    CHECK_FALSE(outcomes[1].has_value());
    CHECK_FALSE(outcomes[2].has_value());
    CHECK(pool.map(twice, std::vector{round}) == std::vector{2 * round});
  }
}
