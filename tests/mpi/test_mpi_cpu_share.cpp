// Which CPUs a serving rank's pool uses (procpool::mpi::detail::share_of_cpus): ranks bound by
// their launcher keep their binding; unbound ranks on one machine share its CPUs out.
#include <catch2/catch.hpp>
#include <procpool/mpi.hpp>
#include <vector>

using procpool::mpi::detail::share_of_cpus;
using Cpus = std::vector<int>;

TEST_CASE("a rank alone on its machine keeps every CPU of its mask", "[mpi][cpus]") {
  CHECK(share_of_cpus({0, 1, 2, 3}, 4, 0, 1) == Cpus{0, 1, 2, 3});
}

TEST_CASE("a rank its launcher bound to some CPUs keeps exactly those", "[mpi][cpus]") {
  CHECK(share_of_cpus({2}, 4, 1, 4) == Cpus{2});
  CHECK(share_of_cpus({4, 5, 6, 7}, 8, 3, 8) == Cpus{4, 5, 6, 7});
}

TEST_CASE("unbound ranks on one machine split its CPUs into equal parts by local rank", "[mpi][cpus]") {
  const Cpus all{0, 1, 2, 3, 4, 5, 6, 7};
  CHECK(share_of_cpus(all, 8, 0, 4) == Cpus{0, 1});
  CHECK(share_of_cpus(all, 8, 1, 4) == Cpus{2, 3});
  CHECK(share_of_cpus(all, 8, 3, 4) == Cpus{6, 7});
  // Parts differ by one CPU at most when they do not divide evenly, and cover every CPU once.
  Cpus covered;
  for (int k = 0; k < 3; ++k) {
    const Cpus part = share_of_cpus(all, 8, k, 3);
    CHECK((part.size() == 2 || part.size() == 3));
    covered.insert(covered.end(), part.begin(), part.end());
  }
  CHECK(covered == all);
}

TEST_CASE("more unbound ranks than CPUs get one CPU each, taken in turn", "[mpi][cpus]") {
  CHECK(share_of_cpus({0, 1}, 2, 0, 3) == Cpus{0});
  CHECK(share_of_cpus({0, 1}, 2, 1, 3) == Cpus{1});
  CHECK(share_of_cpus({0, 1}, 2, 2, 3) == Cpus{0});
}

TEST_CASE("an unknown mask stays unknown, whatever the local ranks", "[mpi][cpus]") {
  CHECK(share_of_cpus({}, 4, 1, 2).empty());
}
