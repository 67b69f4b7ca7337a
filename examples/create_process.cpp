// Python's "create a process":
//   p = multiprocessing.Process(target=show_message); p.start(); p.join()
#include <unistd.h>

#include <cstdio>
#include <procpool/procpool.hpp>

void show_message() { std::printf("Hello from the child process (pid %d)\n", static_cast<int>(::getpid())); }

int main() {
  procpool::Process p{show_message};
  p.start();
  p.join();
  std::printf("The parent (pid %d) waited for the child, which exited with code %d\n", static_cast<int>(::getpid()),
              p.exitcode().value_or(-1));
}
