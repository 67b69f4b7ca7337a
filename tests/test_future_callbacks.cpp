// Future::add_done_callback: runs exactly once when the task ends, at once if it has, on a thread
// that drives the pool (the progress thread when the caller does not), and get() still works.
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <memory>
#include <procpool/pool.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;

namespace {

int slow_twice(int x) {
  std::this_thread::sleep_for(50ms);
  return 2 * x;
}

int twice(int x) { return 2 * x; }

/// Sleeps without calling the pool until `done` holds, for at most 20 s.
template <class Done>
bool sleep_until(Done done) {
  for (int i = 0; i < 2000 && !done(); ++i) std::this_thread::sleep_for(10ms);
  return done();
}

}  // namespace

TEST_CASE("a done callback runs once with the value, and get() still returns it") {
  procpool::Pool pool{procpool_test::two_workers()};
  auto task = pool.submit(slow_twice, 21);
  int calls = 0;
  int seen = 0;
  task.add_done_callback([&](const procpool::Outcome<int>& o) {
    ++calls;
    seen = o.value();
  });
  CHECK(task.get() == 42);
  CHECK(calls == 1);
  CHECK(seen == 42);
}

TEST_CASE("callbacks run while the caller only sleeps, on the pool's progress thread") {
  procpool::Pool pool{procpool_test::two_workers()};
  std::atomic<int> calls{0};
  std::atomic<bool> on_caller_thread{false};
  const auto caller = std::this_thread::get_id();
  std::vector<procpool::Future<int>> tasks;
  for (int i = 0; i < 5; ++i) {
    tasks.push_back(pool.submit(slow_twice, i));
    tasks.back().add_done_callback([&](const procpool::Outcome<int>& o) {
      if (o.has_value()) calls.fetch_add(1);
      if (std::this_thread::get_id() == caller) on_caller_thread = true;
    });
  }
  CHECK(sleep_until([&] { return calls.load() == 5; }));
  CHECK_FALSE(on_caller_thread.load());
  for (auto& t : tasks) CHECK(t.ready());
  for (int i = 0; i < 5; ++i) CHECK(tasks[i].get() == 2 * i);
  CHECK(calls.load() == 5);
}

TEST_CASE("a callback added after the task ended runs at once, on the calling thread") {
  procpool::Pool pool{procpool_test::two_workers()};
  auto task = pool.submit(twice, 5);
  task.wait();
  std::thread::id ran_on;
  int value = 0;
  task.add_done_callback([&](const procpool::Outcome<int>& o) {
    ran_on = std::this_thread::get_id();
    value = o.value();
  });
  CHECK(ran_on == std::this_thread::get_id());
  CHECK(value == 10);
  CHECK(task.get() == 10);
}

TEST_CASE("callbacks run in the order they were added") {
  procpool::Pool pool{procpool_test::two_workers()};
  auto task = pool.submit(slow_twice, 1);
  std::vector<int> order;
  for (int i = 0; i < 4; ++i)
    task.add_done_callback([&order, i](const procpool::Outcome<int>&) { order.push_back(i); });
  CHECK(task.get() == 2);
  CHECK(order == std::vector{0, 1, 2, 3});
}

TEST_CASE("a failed task's callback sees its exception in the Outcome") {
  procpool::Pool pool{procpool_test::two_workers()};
  auto task = pool.submit([](int) -> int { throw std::invalid_argument("bad input"); }, 1);
  std::string what;
  task.add_done_callback([&](const procpool::Outcome<int>& o) {
    REQUIRE_FALSE(o.has_value());
    try {
      std::rethrow_exception(o.error());
    } catch (const procpool::RemoteError& e) {
      what = e.what();
    }
  });
  CHECK_THROWS_AS(task.get(), procpool::RemoteError);
  CHECK_THAT(what, Catch::Contains("bad input"));
}

TEST_CASE("a crashed task's callback sees ProcessError, and the pool goes on") {
  procpool::Pool pool{procpool_test::two_workers()};
  auto task = pool.submit(
      [](int) -> int {
        ::raise(SIGSEGV);
        return 0;
      },
      1);
  std::atomic<bool> saw_process_error{false};
  task.add_done_callback([&](const procpool::Outcome<int>& o) {
    try {
      std::rethrow_exception(o.error());
    } catch (const procpool::ProcessError&) {
      saw_process_error = true;
    }
  });
  CHECK(sleep_until([&] { return saw_process_error.load(); }));
  CHECK_THROWS_AS(task.get(), procpool::ProcessError);
  CHECK(pool.map(twice, std::vector{1, 2}) == std::vector{2, 4});
}

TEST_CASE("a void task's callback gets an Outcome<void>") {
  procpool::Pool pool{procpool_test::two_workers()};
  auto task = pool.submit([](int) {}, 1);
  bool succeeded = false;
  task.add_done_callback([&](const procpool::Outcome<void>& o) { succeeded = o.has_value(); });
  task.get();
  CHECK(succeeded);
}

TEST_CASE("a callback that throws makes get() throw procpool::Error with the callback's exception nested") {
  procpool::Pool pool{procpool_test::two_workers()};
  auto task = pool.submit(slow_twice, 3);
  int later_ran = 0;
  task.add_done_callback([](const procpool::Outcome<int>&) { throw std::logic_error("callback bug"); });
  task.add_done_callback([&](const procpool::Outcome<int>&) { ++later_ran; });
  try {
    (void)task.get();
    FAIL("get() did not report the callback's exception");
  } catch (const procpool::Error& e) {
    CHECK_THAT(e.what(), Catch::Contains("a done callback of this task threw: callback bug"));
    CHECK_THROWS_AS(std::rethrow_if_nested(e), std::logic_error);
  }
  CHECK(later_ran == 1);
  CHECK(pool.submit(twice, 4).get() == 8);
}

TEST_CASE("a callback may submit more work to its pool") {
  procpool::Pool pool{procpool_test::two_workers()};
  procpool::Future<int> second;
  std::atomic<bool> submitted{false};
  auto first = pool.submit(slow_twice, 1);
  first.add_done_callback([&](const procpool::Outcome<int>& o) {
    second = pool.submit(twice, o.value());
    submitted = true;
  });
  CHECK(first.get() == 2);
  REQUIRE(submitted.load());
  CHECK(second.get() == 4);
}

TEST_CASE("callbacks of tasks still running when the pool is destroyed run before the destructor returns") {
  std::atomic<int> calls{0};
  {
    procpool::Pool pool{procpool_test::two_workers()};
    for (int i = 0; i < 3; ++i)
      pool.submit(slow_twice, i).add_done_callback([&](const procpool::Outcome<int>& o) {
        if (o.has_value()) calls.fetch_add(1);
      });
  }
  CHECK(calls.load() == 3);
}

TEST_CASE("callbacks of tasks failed by terminate() run with the termination error") {
  procpool::Pool pool{procpool_test::with_workers(1)};
  std::atomic<int> failed{0};
  for (int i = 0; i < 3; ++i)
    pool.submit(
            [](int) {
              std::this_thread::sleep_for(30s);
              return 0;
            },
            i)
        .add_done_callback([&](const procpool::Outcome<int>& o) {
          if (!o.has_value()) failed.fetch_add(1);
        });
  pool.terminate();
  CHECK(failed.load() == 3);
}

TEST_CASE("a dropped Future's callback that throws is reported on stderr") {
  procpool_test::StdoutCapture err(procpool_test::StdoutCapture::Kind::file, STDERR_FILENO);
  {
    procpool::Pool pool{procpool_test::two_workers()};
    pool.submit(twice, 1).add_done_callback(
        [](const procpool::Outcome<int>&) { throw std::runtime_error("nobody is listening"); });
  }
  CHECK_THAT(err.text(), Catch::Contains("nobody is listening"));
}

TEST_CASE("a done callback that destroys the last handle on its pool ends cleanly") {
  auto pool = std::make_shared<procpool::Pool>(procpool_test::two_workers());
  std::atomic<bool> ran{false};
  // The Future is dropped too: the pool's last owner is the callback, and ~Pool runs on the thread
  // that runs it (the progress thread, as this one only sleeps).
  pool->submit(slow_twice, 1).add_done_callback([holder = pool, &ran](const procpool::Outcome<int>& o) mutable {
    if (o.has_value()) holder.reset();
    ran = true;
  });
  pool.reset();
  CHECK(sleep_until([&] { return ran.load(); }));
  std::this_thread::sleep_for(50ms);  // the detached progress thread finishes after the callback
  CHECK(procpool_test::zombie_children().empty());
}
