// procpool's exceptions and message texts: ItemError catches every way an item fails, with its
// index; SystemError carries a std::error_code; the words for how a child ended (signal names,
// with and without the C library's sigabbrev_np) and the pool's worker-death and timeout texts.
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <optional>
#include <procpool/detail/fd.hpp>
#include <procpool/detail/fork.hpp>
#include <procpool/detail/messages.hpp>
#include <procpool/error.hpp>
#include <procpool/pool.hpp>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using procpool_test::Channel;
using procpool_test::die_by_signal;
using procpool_test::iota_vector;
using procpool_test::square;

namespace {

/// What `error` is when caught as a procpool::ItemError: its item() and its dynamic type, or
/// nullopt if it is no ItemError at all.
struct Caught {
  std::optional<std::size_t> item;
  const std::type_info* type = nullptr;
  std::string what;
};
std::optional<Caught> catch_as_item_error(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const procpool::ItemError& e) {
    return Caught{e.item(), &typeid(e), e.what()};
  } catch (...) {
    return std::nullopt;
  }
}

/// True if `what` is the message `make(index)` gives for one of the two workers of a pool of two.
template <class Make>
bool is_message_of_either_worker(const std::string& what, Make&& make) {
  return what == make(0) || what == make(1);
}

}  // namespace

// ---- the hierarchy ----

TEST_CASE("RemoteError, ProcessError and TimeoutError are ItemErrors, and ItemError and SystemError are procpool::Errors") {
  STATIC_REQUIRE(std::is_base_of_v<procpool::ItemError, procpool::RemoteError>);
  STATIC_REQUIRE(std::is_base_of_v<procpool::ItemError, procpool::ProcessError>);
  STATIC_REQUIRE(std::is_base_of_v<procpool::ItemError, procpool::TimeoutError>);
  STATIC_REQUIRE(std::is_base_of_v<procpool::Error, procpool::ItemError>);
  STATIC_REQUIRE(std::is_base_of_v<procpool::Error, procpool::SystemError>);
  STATIC_REQUIRE_FALSE(std::is_base_of_v<procpool::ItemError, procpool::DecodeError>);
  STATIC_REQUIRE_FALSE(std::is_base_of_v<procpool::ItemError, procpool::SystemError>);
  // The library's own code still names it procpool::detail::SystemError.
  STATIC_REQUIRE(std::is_same_v<procpool::detail::SystemError, procpool::SystemError>);
}

TEST_CASE("each item error keeps its item and its own parts when caught as an ItemError") {
  const auto item_of = [](const auto& error) -> std::optional<std::size_t> {
    try {
      throw error;
    } catch (const procpool::ItemError& e) {
      return e.item();
    }
  };
  CHECK(item_of(procpool::RemoteError("m", "std::runtime_error", "boom", 4)) == std::optional<std::size_t>(4));
  CHECK(item_of(procpool::ProcessError("m", -9, 5)) == std::optional<std::size_t>(5));
  CHECK(item_of(procpool::TimeoutError("m", 6)) == std::optional<std::size_t>(6));
  CHECK(item_of(procpool::ProcessError("m", 3)) == std::nullopt);

  const procpool::RemoteError remote("full text", "std::out_of_range", "index 7", 2);
  CHECK(std::string(remote.what()) == "full text");
  CHECK(remote.type_name() == "std::out_of_range");
  CHECK(remote.remote_what() == "index 7");
  CHECK(procpool::ProcessError("m", -11, 1).exitcode() == -11);
}

TEST_CASE("catching ItemError catches a task that throws, one that aborts and one that hangs, each with its item") {
  constexpr int kItems = 10;
  constexpr int kThrows = 3;
  constexpr int kAborts = 5;
  constexpr int kHangs = 7;
  constexpr auto kTimeout = 300ms;
  Channel aborting_pid;
  Channel hanging_pid;
  auto options = procpool_test::two_workers();
  options.task_timeout = kTimeout;
  procpool::Pool pool(options);
  const auto task = [abort_fd = aborting_pid.write_fd(), hang_fd = hanging_pid.write_fd()](int i) -> long {
    const int pid = ::getpid();
    if (i == kThrows) throw std::runtime_error("boom");
    if (i == kAborts) {
      (void)!::write(abort_fd, &pid, sizeof pid);
      die_by_signal(SIGABRT);
    }
    if (i == kHangs) {
      (void)!::write(hang_fd, &pid, sizeof pid);
      std::this_thread::sleep_for(10s);
    }
    return square(i);
  };

  const auto outcomes = pool.try_map(task, iota_vector(kItems));
  REQUIRE(outcomes.size() == static_cast<std::size_t>(kItems));
  for (int i = 0; i < kItems; ++i) {
    INFO("item " << i);
    const auto& o = outcomes[static_cast<std::size_t>(i)];
    if (i != kThrows && i != kAborts && i != kHangs) {
      REQUIRE(o.has_value());
      CHECK(o.value() == square(i));
      continue;
    }
    REQUIRE_FALSE(o.has_value());
    const std::optional<Caught> caught = catch_as_item_error(o.error());
    REQUIRE(caught.has_value());
    INFO(caught->what);
    CHECK(caught->item == std::optional<std::size_t>(static_cast<std::size_t>(i)));
    if (i == kThrows) {
      CHECK(*caught->type == typeid(procpool::RemoteError));
      CHECK_THAT(caught->what, Contains("item 3 in worker ") && Contains("threw std::runtime_error: boom"));
    } else if (i == kAborts) {
      CHECK(*caught->type == typeid(procpool::ProcessError));
      const std::optional<int> pid = aborting_pid.receive(1s);
      REQUIRE(pid.has_value());
      // The pool's text is the one worker_ended_message builds.
      CHECK(is_message_of_either_worker(caught->what, [&](int index) {
        return procpool::detail::worker_ended_message("procpool::Pool", procpool::detail::describe_worker(index, *pid),
                                                      -SIGABRT, "item 5");
      }));
      CHECK_THAT(caught->what,
                 StartsWith("procpool::Pool: worker ") &&
                     Contains("was killed by signal 6 (SIGABRT) while running item 5; the worker was replaced"));
    } else {
      CHECK(*caught->type == typeid(procpool::TimeoutError));
      const std::optional<int> pid = hanging_pid.receive(1s);
      REQUIRE(pid.has_value());
      CHECK(is_message_of_either_worker(caught->what, [&](int index) {
        return procpool::detail::task_timeout_message("procpool::Pool", "item 7", kTimeout,
                                                      procpool::detail::describe_worker(index, *pid));
      }));
    }
  }

  // map itself throws the first failure, which ItemError catches too.
  try {
    (void)pool.map(task, iota_vector(kItems));
    FAIL("map did not throw");
  } catch (const procpool::ItemError& e) {
    CHECK(e.item() == std::optional<std::size_t>(kThrows));
  }
}

// ---- SystemError ----

TEST_CASE("SystemError says what failed with the errno text and carries the errno as a std::error_code") {
  const procpool::SystemError e("procpool: cannot create a pipe", EMFILE);
  CHECK(std::string(e.what()) == "procpool: cannot create a pipe: Too many open files (errno 24)");
  CHECK(e.error_number() == EMFILE);
  CHECK(e.code() == std::errc::too_many_files_open);
  CHECK(e.code().value() == EMFILE);
  CHECK(e.code().category() == std::system_category());
}

TEST_CASE("a failed system call in the library throws a SystemError whose code names the errno") {
  try {
    procpool::detail::set_nonblocking(-1, true);  // fcntl on a bad descriptor: EBADF
    FAIL("set_nonblocking(-1) did not throw");
  } catch (const procpool::SystemError& e) {
    CHECK(e.code() == std::errc::bad_file_descriptor);
    CHECK_THAT(e.what(), Contains("fcntl(F_GETFL) failed: Bad file descriptor (errno 9)"));
  }
}

// ---- signal names ----

TEST_CASE("signal_name names standard signals as SIGXXX and others as signal N") {
  using procpool::detail::signal_name;
  CHECK(signal_name(SIGKILL) == "SIGKILL");
  CHECK(signal_name(SIGSEGV) == "SIGSEGV");
  CHECK(signal_name(SIGABRT) == "SIGABRT");
  CHECK(signal_name(SIGTERM) == "SIGTERM");
  CHECK(signal_name(SIGRTMIN + 1) == "signal " + std::to_string(SIGRTMIN + 1));
  CHECK(signal_name(0) == "signal 0");
  CHECK(signal_name(1000) == "signal 1000");
}

TEST_CASE("the fallback signal table for C libraries without sigabbrev_np names the standard signals") {
  using procpool::detail::signal_name_from_table;
  CHECK(signal_name_from_table(SIGHUP) == "SIGHUP");
  CHECK(signal_name_from_table(SIGINT) == "SIGINT");
  CHECK(signal_name_from_table(SIGKILL) == "SIGKILL");
  CHECK(signal_name_from_table(SIGSEGV) == "SIGSEGV");
  CHECK(signal_name_from_table(SIGCHLD) == "SIGCHLD");
  CHECK(signal_name_from_table(SIGSYS) == "SIGSYS");
  CHECK(signal_name_from_table(SIGRTMIN) == "signal " + std::to_string(SIGRTMIN));
  CHECK(signal_name_from_table(0) == "signal 0");
  CHECK(signal_name_from_table(-3) == "signal -3");
  CHECK(signal_name_from_table(1000) == "signal 1000");
}

TEST_CASE("the fallback signal table gives every signal the name this C library gives it") {
  // On glibc 2.32 and later signal_name asks sigabbrev_np: the table must agree with it, so that
  // messages do not depend on the C library's version.
  for (int sig = 0; sig <= SIGRTMAX + 1; ++sig) {
    INFO("signal " << sig);
    CHECK(procpool::detail::signal_name_from_table(sig) == procpool::detail::signal_name(sig));
  }
}

// ---- how a child ended ----

TEST_CASE("describe_ending says was killed by signal N (SIGXXX), exited with code N, or ended in an unknown way") {
  using procpool::detail::describe_ending;
  CHECK(describe_ending(-SIGKILL) == "was killed by signal 9 (SIGKILL)");
  CHECK(describe_ending(-SIGSEGV) == "was killed by signal 11 (SIGSEGV)");
  CHECK(describe_ending(3) == "exited with code 3");
  CHECK(describe_ending(0) == "exited with code 0");
  CHECK(describe_ending(-(SIGRTMIN + 2)) ==
        "was killed by signal " + std::to_string(SIGRTMIN + 2) + " (signal " + std::to_string(SIGRTMIN + 2) + ")");
  CHECK(describe_ending(procpool::detail::kExitcodeUnknown) == "ended in an unknown way");
}

TEST_CASE("describe_exitcode says killed by signal N (SIGXXX) or exited with code N") {
  using procpool::detail::describe_exitcode;
  CHECK(describe_exitcode(-SIGABRT) == "killed by signal 6 (SIGABRT)");
  CHECK(describe_exitcode(255) == "exited with code 255");
  CHECK(describe_exitcode(procpool::detail::kExitcodeUnknown) == "ended in an unknown way");
}

// ---- the pool's messages ----

TEST_CASE("the worker messages name the worker, how it ended and the item it was running") {
  using namespace procpool::detail;
  CHECK(describe_worker(1, 4242) == "worker 1 (pid 4242)");
  CHECK(worker_ended_message("procpool::Pool", describe_worker(1, 4242), -SIGKILL, "item 41") ==
        "procpool::Pool: worker 1 (pid 4242) was killed by signal 9 (SIGKILL) while running item 41; the worker "
        "was replaced");
  CHECK(worker_ended_message("procpool::Pool", describe_worker(0, 17), 3, "item 0") ==
        "procpool::Pool: worker 0 (pid 17) exited with code 3 while running item 0; the worker was replaced");
}

TEST_CASE("the timeout messages give the timeout in milliseconds and the worker that was killed") {
  using namespace procpool::detail;
  CHECK(task_timeout_message("procpool::Pool", "item 41", 500ms, describe_worker(1, 4242)) ==
        "procpool::Pool: item 41 ran longer than the task timeout of 500 ms; worker 1 (pid 4242) was killed and "
        "replaced");
  CHECK(task_timeout_message("procpool::Pool", "item 2", 2s, describe_worker(0, 9)) ==
        "procpool::Pool: item 2 ran longer than the task timeout of 2000 ms; worker 0 (pid 9) was killed and "
        "replaced");
  CHECK(task_timeout_message("procpool::Pool", "item 3", 500us, describe_worker(0, 9)) ==
        "procpool::Pool: item 3 ran longer than the task timeout of 500 us; worker 0 (pid 9) was killed and "
        "replaced");
  CHECK(describe_duration(1500ns) == "1500 ns");
  CHECK(describe_duration(1500us) == "1500 us");
  CHECK(describe_duration(3s) == "3000 ms");
  CHECK(initializer_timeout_message("procpool::Pool", 250ms, describe_worker(1, 4242)) ==
        "procpool::Pool: the initializer ran longer than the task timeout of 250 ms in worker 1 (pid 4242), which "
        "was killed; the pool cannot start workers (make the initializer return sooner, or raise task_timeout)");
}
