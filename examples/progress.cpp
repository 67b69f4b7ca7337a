// A progress bar on a map, like Python's tqdm around pool.imap:
//   from tqdm import tqdm
//   with multiprocessing.Pool(4) as pool:
//       squares = list(tqdm(pool.imap(slow_square, range(200)), total=200, desc="squares"))
//
// procpool::progress_bar draws on stderr: one line redrawn in place on a terminal, plain lines
// (about one a second, and a final 100% line) when stderr is a file or a pipe. The results go to
// stdout as usual.
#include <fmt/core.h>

#include <chrono>
#include <numeric>
#include <procpool/procpool.hpp>
#include <procpool/progress.hpp>
#include <thread>
#include <vector>

long slow_square(int x) {
  std::this_thread::sleep_for(std::chrono::milliseconds{10});  // stands for real work
  return static_cast<long>(x) * x;
}

int main() {
  std::vector<int> inputs(200);
  std::iota(inputs.begin(), inputs.end(), 0);

  procpool::Pool pool{4};
  const std::vector<long> squares =
      pool.map(slow_square, inputs, procpool::MapOptions{.on_progress = procpool::progress_bar("squares")});

  const long sum = std::accumulate(squares.begin(), squares.end(), 0L);
  fmt::print("sum of the squares of 0..199: {}\n", sum);  // 2646700
}
