// procpool::as_completed: each future once, in the order the tasks finish.
#include <catch2/catch.hpp>
#include <chrono>
#include <procpool/as_completed.hpp>
#include <procpool/pool.hpp>
#include <stdexcept>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;

namespace {

int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

}  // namespace

TEST_CASE("as_completed yields every future once, the fastest task first") {
  procpool::Pool pool{procpool_test::with_workers(3)};
  std::vector<procpool::Future<int>> tasks;
  for (const int ms : {900, 50, 450}) tasks.push_back(pool.submit(sleep_ms, ms));
  std::vector<int> order;
  for (procpool::Future<int>& f : procpool::as_completed(tasks)) order.push_back(f.get());
  CHECK(order == std::vector{50, 450, 900});
}

TEST_CASE("as_completed yields failed tasks too, whose get() throws") {
  procpool::Pool pool{procpool_test::two_workers()};
  std::vector<procpool::Future<int>> tasks;
  tasks.push_back(pool.submit(sleep_ms, 300));
  tasks.push_back(pool.submit([](int) -> int { throw std::runtime_error("boom"); }, 0));
  int values = 0;
  int failures = 0;
  for (auto& f : procpool::as_completed(tasks)) {
    try {
      (void)f.get();
      ++values;
    } catch (const procpool::RemoteError&) {
      ++failures;
      CHECK(values == 0);  // the failure comes first: it ends at once
    }
  }
  CHECK(values == 1);
  CHECK(failures == 1);
}

TEST_CASE("as_completed over futures of two pools yields them as they finish") {
  procpool::Pool slow{procpool_test::with_workers(1)};
  procpool::Pool fast{procpool_test::with_workers(1)};
  std::vector<procpool::Future<int>> tasks;
  tasks.push_back(slow.submit(sleep_ms, 600));
  tasks.push_back(fast.submit(sleep_ms, 30));
  std::vector<int> order;
  for (auto& f : procpool::as_completed(tasks)) order.push_back(f.get());
  CHECK(order == std::vector{30, 600});
}

TEST_CASE("as_completed over no futures yields nothing") {
  std::vector<procpool::Future<int>> none;
  int n = 0;
  for ([[maybe_unused]] auto& f : procpool::as_completed(none)) ++n;
  CHECK(n == 0);
}

TEST_CASE("as_completed refuses a future whose result was taken, naming it") {
  procpool::Pool pool{procpool_test::two_workers()};
  std::vector<procpool::Future<int>> tasks;
  tasks.push_back(pool.submit(sleep_ms, 1));
  tasks.push_back(pool.submit(sleep_ms, 1));
  (void)tasks[1].get();
  CHECK_THROWS_WITH(procpool::as_completed(tasks), Catch::Contains("future 1 has no task"));
  (void)tasks[0].get();
}

TEST_CASE("as_completed yields a cancelled task when it is cancelled") {
  procpool::Pool pool{procpool_test::with_workers(1)};
  std::vector<procpool::Future<int>> tasks;
  tasks.push_back(pool.submit(sleep_ms, 400));
  tasks.push_back(pool.submit(sleep_ms, 1));
  CHECK(tasks[1].cancel());
  std::vector<bool> cancelled;
  for (auto& f : procpool::as_completed(tasks)) {
    try {
      (void)f.get();
      cancelled.push_back(false);
    } catch (const procpool::CancelledError&) {
      cancelled.push_back(true);
    }
  }
  CHECK(cancelled == std::vector<bool>{true, false});
}
