// A task that crashes takes down only its own worker: the pool reports that item, replaces the
// worker, and every other item completes. (Python's Pool.map would hang forever here.)
#include <fmt/core.h>

#include <csignal>
#include <exception>
#include <procpool/procpool.hpp>
#include <vector>

int risky(int x) {
  if (x == 3) std::raise(SIGSEGV);  // stands in for a null dereference in some C library
  return x * 10;
}

int main() {
  procpool::Pool pool{2};
  const std::vector<int> inputs{1, 2, 3, 4, 5};
  const auto outcomes = pool.try_map(risky, inputs);
  for (std::size_t i = 0; i < outcomes.size(); ++i) {
    if (outcomes[i]) {
      fmt::print("item {}: {}\n", i, outcomes[i].value());
    } else {
      try {
        std::rethrow_exception(outcomes[i].error());
      } catch (const procpool::ProcessError& e) {
        fmt::print("item {} failed: {}\n", i, e.what());
      }
    }
  }
  // The pool is still whole: the crashed worker was replaced.
  fmt::print("afterwards: {} workers, and map still works: {}\n", pool.size(), pool.map(risky, std::vector{6})[0]);

  // map() itself reports the crash as an exception naming the item.
  try {
    (void)pool.map(risky, inputs);
  } catch (const procpool::ProcessError& e) {
    fmt::print("map threw procpool::ProcessError: {}\n", e.what());
  }
}
