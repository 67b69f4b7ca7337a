// procpool::mpi's benchmark program, run by benchmarks/compare_mpi: under `mpirun -n 3` it measures
// procpool::mpi (rank 0 drives, ranks 1 and 2 serve); started alone, the same program measures
// the local procpool::Pool it then runs on. One JSON object per line on stdout:
//   {"impl": "...", "workload": "...", "param": ..., "samples": [...], "unit": "..."}
// Workloads: map (1e6 trivial items, seconds per map; map_cold: the job's first one), roundtrip
// (submit + get, microseconds each), payload (64 items of 1 MiB in and 1 MiB out, seconds per
// map; payload_into: the same with map_into). --smoke: tiny sizes.
// --workers-per-rank N: Options::workers_per_rank (default 0: one per CPU of each rank's affinity
// mask); the results are then named "procpool_mpi_wN".
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <procpool/mpi.hpp>
#include <string>
#include <vector>

namespace {

long square(long x) { return x * x; }

std::string echo(const std::string& s) { return s; }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// CPU time of this process (the driver, on rank 0), in seconds.
double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

void emit(const char* impl, const char* workload, std::size_t param, const std::vector<double>& samples,
          const char* unit) {
  std::string list;
  for (const double s : samples) list += (list.empty() ? "" : ", ") + fmt::format("{:.9g}", s);
  std::printf("{\"impl\": \"%s\", \"workload\": \"%s\", \"param\": %zu, \"samples\": [%s], \"unit\": \"%s\"}\n", impl,
              workload, param, list.c_str(), unit);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) try {
  bool smoke = false;
  procpool::mpi::Options options;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--smoke") == 0) {
      smoke = true;
    } else if (std::strcmp(argv[i], "--workers-per-rank") == 0 && i + 1 < argc) {
      options.workers_per_rank = static_cast<std::size_t>(std::strtoul(argv[++i], nullptr, 10));
    } else {
      std::fprintf(stderr, "procpool_mpi_bench: unknown argument '%s' (use --smoke, --workers-per-rank N)\n", argv[i]);
      return 2;
    }
  }
  const std::string mpi_name = options.workers_per_rank == 0
                                   ? std::string("procpool_mpi")
                                   : fmt::format("procpool_mpi_w{}", options.workers_per_rank);
  return procpool::mpi::run(argc, argv, options, [&](procpool::mpi::Pool& pool) {
    const char* impl = pool.ranks() > 0 ? mpi_name.c_str() : "procpool_local";
    // map: 1e6 trivial items.
    {
      const std::size_t n = smoke ? 10'000 : 1'000'000;
      std::vector<long> in(n);
      for (std::size_t i = 0; i < n; ++i) in[i] = static_cast<long>(i % 1000);
      // The job's first maps are slower (its cost is still being measured, and every process's
      // buffers are still fresh memory): the first is reported on its own, and two more warm up, as
      // mpi4py_bench's maps at smaller chunksizes warm up its best one.
      const auto cold = std::chrono::steady_clock::now();
      if (pool.map(square, in).size() != n) return 1;
      emit(impl, "map_cold", n, {seconds_since(cold)}, "s");
      for (int rep = 0; rep < (smoke ? 0 : 2); ++rep) (void)pool.map(square, in);
      std::vector<double> samples;
      for (int rep = 0; rep < (smoke ? 2 : 7); ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        const std::vector<long> out = pool.map(square, in);
        samples.push_back(seconds_since(t0));
        if (out.size() != n || out[n - 1] != in[n - 1] * in[n - 1]) return 1;
      }
      emit(impl, "map", n, samples, "s");
    }
    // roundtrip: one submit and its get, again and again.
    {
      const int n = smoke ? 50 : 3000;
      std::vector<double> samples;
      for (int i = 0; i < n; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        auto f = pool.submit(square, static_cast<long>(i));
        if (f.get() != static_cast<long>(i) * i) return 1;
        samples.push_back(seconds_since(t0) * 1e6);
      }
      emit(impl, "roundtrip", 1, samples, "us");
    }
    // chunks: one item per chunk, so the driver's cost per chunk and the message rate show.
    {
      const std::size_t n = smoke ? 500 : 20'000;
      std::vector<long> in(n, 3);
      std::vector<double> wall;
      std::vector<double> cpu;
      for (int rep = 0; rep < (smoke ? 1 : 3); ++rep) {
        const double c0 = cpu_seconds();
        const auto t0 = std::chrono::steady_clock::now();
        const std::vector<long> out = pool.map(square, in, {.chunk_size = 1});
        wall.push_back(seconds_since(t0) / static_cast<double>(n) * 1e6);
        cpu.push_back((cpu_seconds() - c0) / static_cast<double>(n) * 1e6);
        if (out.size() != n) return 1;
      }
      emit(impl, "chunk_wall", n, wall, "us");
      emit(impl, "chunk_cpu", n, cpu, "us");
    }
    // payload: 64 x 1 MiB in and out.
    {
      const std::size_t items = smoke ? 4 : 64;
      const std::vector<std::string> in(items, std::string(std::size_t{1} << 20, 'x'));
      std::vector<double> samples;
      std::vector<double> cpu;
      (void)pool.map(echo, in);
      for (int rep = 0; rep < (smoke ? 2 : 5); ++rep) {
        const double c0 = cpu_seconds();
        const auto t0 = std::chrono::steady_clock::now();
        const std::vector<std::string> out = pool.map(echo, in, {.chunk_size = 1});
        samples.push_back(seconds_since(t0));
        cpu.push_back((cpu_seconds() - c0) / (2.0 * static_cast<double>(items << 20)) * 1e9);
        if (out.size() != items || out.back().size() != in.back().size()) return 1;
      }
      emit(impl, "payload", items, samples, "s");
      emit(impl, "byte_cpu", items, cpu, "ns");
      // The same with map_into: the results are decoded into the strings of the previous call,
      // whose memory is reused, where map's results are new strings in fresh pages.
      std::vector<std::string> into;
      pool.map_into(echo, in, into);
      samples.clear();
      for (int rep = 0; rep < (smoke ? 2 : 5); ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        pool.map_into(echo, in, into, {.chunk_size = 1});
        samples.push_back(seconds_since(t0));
        if (into.size() != items || into.back() != in.back()) return 1;
      }
      emit(impl, "payload_into", items, samples, "s");
    }
    return 0;
  });
} catch (const std::exception& e) {
  std::fprintf(stderr, "procpool_mpi_bench: %s\n", e.what());
  return 1;
}
