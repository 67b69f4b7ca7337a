// procpool::mpi::Pool::map with a closure that holds a std::function (neither trivially copyable nor
// encodable: on the local pool it would run in fresh workers, which another machine cannot have).
// expect: procpool::mpi::Pool::map: this callable cannot travel to another machine
// expect-first: procpool::mpi::Pool::map: this callable cannot travel to another machine
#include <functional>
#include <procpool/mpi.hpp>
#include <vector>

int main(int argc, char** argv) {
  return procpool::mpi::run(argc, argv, [](procpool::mpi::Pool& pool) {
    std::function<int(int)> twice = [](int x) { return 2 * x; };
    auto out = pool.map([twice](int x) { return twice(x); }, std::vector{1, 2, 3});
    return out.empty() ? 1 : 0;
  });
}
