// Runs a callable in a child process through the installed or embedded procpool.
#include <procpool/procpool.hpp>

#include <cstdio>

int main() {
  procpool::Process sum{[](int a, int b) { return a + b; }, 2, 3};
  sum.start();
  const int five = sum.get();
  std::printf("consumer: 2 + 3 = %d\n", five);
  return five == 5 ? 0 : 1;
}
