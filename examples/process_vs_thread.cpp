// How a process differs from a thread: memory is not shared, and a crash stays in the child.
#include <csignal>
#include <cstdio>
#include <procpool/procpool.hpp>
#include <thread>

int counter = 0;  // a global: shared by threads, copied into each child process

int main() {
  counter = 1;
  std::thread t([] { counter = 100; });
  t.join();
  std::printf("A thread set counter to 100; the program now sees counter = %d (threads share memory)\n", counter);

  procpool::Process p{[] {
    counter = 200;
    return counter;
  }};
  p.start();
  const int in_child = p.get();
  std::printf("A child process set counter to %d; the parent still sees counter = %d (a process has its own copy)\n",
              in_child, counter);

  procpool::Process crash{[]() -> int {
    std::signal(SIGSEGV, SIG_DFL);
    std::raise(SIGSEGV);  // as a bad pointer would; in a thread this would end the whole program
    return 0;
  }};
  crash.start();
  try {
    (void)crash.get();
  } catch (const procpool::ProcessError& e) {
    std::printf("A child process crashed: %s\n", e.what());
    std::printf("Its exit code is %d (minus the signal number); the parent keeps running.\n", e.exitcode());
  }
  std::printf("Still here: counter = %d\n", counter);
}
