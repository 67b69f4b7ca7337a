// The same program on a laptop and across a cluster: under `mpirun -n 3 ./cluster_square_map` rank 0
// runs the function below and ranks 1 and 2 run its tasks on their local worker processes; started
// alone, it runs them on a local pool of this machine's cores.
#include <procpool/mpi.hpp>

#include <fmt/core.h>
#include <fmt/ranges.h>

#include <unistd.h>

#include <vector>

int square(int x) { return x * x; }

// Which rank and host ran an item: procpool::mpi::rank() is right inside a rank's worker processes.
std::string where(int /*item*/) {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return fmt::format("rank {} on {}", procpool::mpi::rank(), host);
}

int main(int argc, char** argv) {
  return procpool::mpi::run(argc, argv, [](procpool::mpi::Pool& pool) {
    const std::vector<int> squares = pool.map(square, std::vector{1, 2, 3, 4, 5});
    fmt::print("{}\n", squares);
    fmt::print("{} workers on {} serving ranks\n", pool.size(), pool.ranks());
    const std::vector<std::string> ran_on = pool.map(where, std::vector{0, 1, 2, 3}, {.chunk_size = 1});
    fmt::print("4 items ran on: {}\n", ran_on);
    return 0;
  });
}
