// Python's four processes, each printing a different number:
//   ps = [multiprocessing.Process(target=print_number, args=(i,)) for i in range(1, 5)]
//   for p in ps: p.start()
//   for p in ps: p.join()
//   print("Program execution completed.")
#include <cstdio>
#include <procpool/procpool.hpp>
#include <vector>

void print_number(int n) { std::printf("Process %d: %d\n", n, n); }

int main() {
  std::vector<procpool::Process<void>> ps;
  for (int i = 1; i <= 4; ++i) ps.emplace_back(print_number, i);
  for (auto& p : ps) p.start();
  for (auto& p : ps) p.join();  // the lines above may come in any order
  std::printf("Program execution completed.\n");
}
