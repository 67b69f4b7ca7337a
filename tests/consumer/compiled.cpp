// Maps a function over a pool with procpool's core compiled once, in procpool::compiled: this file
// is built with PROCPOOL_SEPARATE_COMPILATION (which linking procpool::compiled defines).
#include <procpool/procpool.hpp>

#include <cstdio>
#include <vector>

#ifndef PROCPOOL_SEPARATE_COMPILATION
#error "linking procpool::compiled defines PROCPOOL_SEPARATE_COMPILATION"
#endif

int square(int x) { return x * x; }

int main() {
  procpool::Pool pool(procpool::PoolOptions{.workers = 2});
  const std::vector<int> squares = pool.map(square, std::vector{1, 2, 3});
  std::printf("consumer_compiled: squares %d %d %d\n", squares[0], squares[1], squares[2]);
  return squares == std::vector{1, 4, 9} ? 0 : 1;
}
