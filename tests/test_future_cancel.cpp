// Future::cancel: a task that has not started never runs, a running one is stopped with its
// worker, a finished one keeps its result; cancel racing completion gives one coherent outcome.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <procpool/pool.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;

namespace {

std::string marker(const std::string& tag) {
  static int counter = 0;
  return "/tmp/procpool-test-cancel-" + std::to_string(::getpid()) + "-" + tag + "-" + std::to_string(++counter);
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

/// Leaves a file behind (the task started), then sleeps; returns the time slept.
int mark_then_sleep(std::string path, int ms) {
  std::ofstream(path) << "started";
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

/// Waits (without calling the pool) until a task left its file, for at most 20 s.
bool wait_for_file(const std::string& path) {
  for (int i = 0; i < 2000 && !exists(path); ++i) std::this_thread::sleep_for(10ms);
  return exists(path);
}

int twice(int x) { return 2 * x; }

}  // namespace

TEST_CASE("cancelling a task that has not started returns true, it never runs, and get() throws CancelledError") {
  procpool::Pool pool{procpool_test::with_workers(1)};
  const std::string blocker_file = marker("blocker");
  const std::string queued_file = marker("queued");
  auto blocker = pool.submit(mark_then_sleep, blocker_file, 400);
  REQUIRE(wait_for_file(blocker_file));
  // The same function: this task may travel in the blocker's chunk, already on the worker, or
  // wait in the pool's queue; either way it must not start.
  auto queued = pool.submit(mark_then_sleep, queued_file, 0);
  CHECK(queued.cancel());
  CHECK(blocker.get() == 400);
  CHECK_THROWS_AS(queued.get(), procpool::CancelledError);
  CHECK(pool.map(twice, std::vector{1, 2, 3}) == std::vector{2, 4, 6});
  CHECK_FALSE(exists(queued_file));
  ::unlink(blocker_file.c_str());
}

TEST_CASE("a task queued behind a running one in the same worker's chunk is withdrawn, and the others run") {
  procpool::Pool pool{procpool_test::with_workers(1)};
  std::vector<std::string> files;
  std::vector<procpool::Future<int>> tasks;
  // A burst of submits of one function travels to the worker as one chunk.
  for (int i = 0; i < 4; ++i) {
    files.push_back(marker("burst"));
    tasks.push_back(pool.submit(mark_then_sleep, files.back(), i == 0 ? 300 : 1));
  }
  REQUIRE(wait_for_file(files[0]));
  CHECK(tasks[2].cancel());
  CHECK(tasks[0].get() == 300);
  CHECK(tasks[1].get() == 1);
  CHECK_THROWS_AS(tasks[2].get(), procpool::CancelledError);
  CHECK(tasks[3].get() == 1);
  CHECK_FALSE(exists(files[2]));
  for (const auto& f : files) ::unlink(f.c_str());
}

TEST_CASE("cancelling a running task kills its worker, and the pool replaces it and goes on") {
  procpool::Pool pool{procpool_test::with_workers(1)};
  const std::string file = marker("running");
  auto task = pool.submit(mark_then_sleep, file, 30'000);
  REQUIRE(wait_for_file(file));
  const std::vector<pid_t> before = pool.worker_pids();
  const auto start = std::chrono::steady_clock::now();
  CHECK(task.cancel());
  try {
    (void)task.get();
    FAIL("get() returned a value for a cancelled task");
  } catch (const procpool::CancelledError& e) {
    CHECK_THAT(e.what(), Catch::Contains("the submitted task was cancelled"));
  }
  CHECK(std::chrono::steady_clock::now() - start < 10s);
  CHECK(pool.map(twice, std::vector{5, 6}) == std::vector{10, 12});
  CHECK(pool.worker_pids() != before);
  ::unlink(file.c_str());
}

TEST_CASE("work queued on the worker of a cancelled running task runs elsewhere") {
  procpool::Pool pool{procpool_test::with_workers(2)};
  std::vector<std::string> files;
  std::vector<procpool::Future<int>> tasks;
  for (int i = 0; i < 3; ++i) {
    files.push_back(marker("chunk"));
    tasks.push_back(pool.submit(mark_then_sleep, files.back(), i == 0 ? 30'000 : 20));
  }
  REQUIRE(wait_for_file(files[0]));
  CHECK(tasks[0].cancel());
  CHECK_THROWS_AS(tasks[0].get(), procpool::CancelledError);
  CHECK(tasks[1].get() == 20);
  CHECK(tasks[2].get() == 20);
  for (const auto& f : files) ::unlink(f.c_str());
}

TEST_CASE("cancelling a finished task returns false and its result stays") {
  procpool::Pool pool{procpool_test::two_workers()};
  auto task = pool.submit(twice, 21);
  task.wait();
  CHECK_FALSE(task.cancel());
  CHECK(task.get() == 42);

  auto failed = pool.submit([](int) -> int { throw std::runtime_error("no"); }, 1);
  failed.wait();
  CHECK_FALSE(failed.cancel());
  CHECK_THROWS_AS(failed.get(), procpool::RemoteError);
}

TEST_CASE("cancel racing completion gives either the value (false) or CancelledError (true), never both") {
  procpool::Pool pool{procpool_test::two_workers()};
  int cancelled = 0;
  int finished = 0;
  for (int round = 0; round < 200; ++round) {
    auto task = pool.submit(twice, round);
    if (round % 3 == 1) std::this_thread::sleep_for(std::chrono::microseconds(round * 5));
    if (round % 3 == 2) (void)task.ready();
    if (task.cancel()) {
      CHECK_THROWS_AS(task.get(), procpool::CancelledError);
      ++cancelled;
    } else {
      CHECK(task.get() == 2 * round);
      ++finished;
    }
  }
  CHECK(cancelled + finished == 200);
  CHECK(pool.map(twice, std::vector{1, 2}) == std::vector{2, 4});
}

TEST_CASE("cancelling twice returns true once, then false") {
  procpool::Pool pool{procpool_test::with_workers(1)};
  const std::string file = marker("twice");
  auto blocker = pool.submit(mark_then_sleep, file, 300);
  auto task = pool.submit(twice, 1);
  CHECK(task.cancel());
  CHECK_FALSE(task.cancel());
  CHECK_THROWS_AS(task.get(), procpool::CancelledError);
  CHECK(blocker.get() == 300);
  ::unlink(file.c_str());
}

TEST_CASE("a cancelled task's done callback sees CancelledError") {
  procpool::Pool pool{procpool_test::with_workers(1)};
  const std::string file = marker("callback");
  auto blocker = pool.submit(mark_then_sleep, file, 200);
  auto task = pool.submit(twice, 4);
  bool saw_cancel = false;
  task.add_done_callback([&](const procpool::Outcome<int>& o) {
    try {
      (void)o.value();
    } catch (const procpool::CancelledError&) {
      saw_cancel = true;
    }
  });
  CHECK(task.cancel());
  CHECK_THROWS_AS(task.get(), procpool::CancelledError);
  CHECK(saw_cancel);
  CHECK(blocker.get() == 200);
  ::unlink(file.c_str());
}
