// procpool_bench: the C++ side of benchmarks/compare.
//
//   procpool_bench --workload NAME [--smoke]
//
// runs one workload with procpool, a plain std::thread static-partition loop and sequential C++,
// and prints one JSON object per line and measurement ("cell") on stdout:
//
//   {"workload": "map", "param": 1000000, "impl": "procpool", "items": 1000000, "samples": [s, ...]}
//
// samples are wall-clock seconds per repetition (or per round trip for "roundtrip"). The
// repetitions of the implementations are interleaved (rep 1 of each, then rep 2 of each, ...,
// each rep starting one implementation later) so that a burst of load on this shared machine, or
// the state one implementation leaves behind, hits all of them alike. Any wrong result or
// exception ends the program with a message on stderr and exit status 1.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <numeric>
#include <procpool/procpool.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using Bytes = std::vector<unsigned char>;

constexpr std::size_t kWorkers = 2;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

template <class F>
double time_once(F&& f) {
  const auto start = Clock::now();
  f();
  return seconds_since(start);
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "procpool_bench: %s\n", what.c_str());
  std::exit(1);
}

void check(bool ok, const std::string& what) {
  if (!ok) fail("wrong result: " + what);
}

// ---- the work ---------------------------------------------------------------------------------

std::int64_t square(std::int64_t x) { return x * x; }

void nothing() {}

/// A busy loop of `iters` dependent multiply-adds: CPU work the compiler cannot remove or shorten.
std::uint64_t spin(std::uint64_t iters) {
  std::uint64_t x = iters | 1U;
  for (std::uint64_t i = 0; i < iters; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    asm volatile("" : "+r"(x));
  }
  return x;
}

/// Echoes a payload: the result is a 1 MiB vector like the input (one copy in the worker).
Bytes echo(const Bytes& in) { return in; }

/// Loop iterations of spin() per millisecond on this machine: the fastest of several timings,
/// since on a shared machine a slow timing means the loop was preempted, not that it is slower.
double spin_iters_per_ms() {
  constexpr std::uint64_t probe = 2'000'000;
  double best = 1e300;
  for (int i = 0; i < 15; ++i) {
    volatile std::uint64_t sink = 0;
    const double t = time_once([&] { sink = spin(probe); });
    (void)sink;
    best = std::min(best, t);
  }
  return static_cast<double>(probe) / (best * 1e3);
}

// ---- the baselines ------------------------------------------------------------------------------

/// Python's multiprocessing without processes: kWorkers std::threads, each given one contiguous
/// share of the input, spawned and joined on every call.
template <class In, class F>
auto thread_map(const std::vector<In>& in, F f) {
  using Out = decltype(f(in[0]));
  std::vector<Out> out(in.size());
  std::vector<std::thread> threads;
  const std::size_t n = in.size();
  for (std::size_t t = 0; t < kWorkers; ++t) {
    const std::size_t lo = n * t / kWorkers;
    const std::size_t hi = n * (t + 1) / kWorkers;
    threads.emplace_back([&in, &out, f, lo, hi] {
      for (std::size_t i = lo; i < hi; ++i) out[i] = f(in[i]);
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

template <class In, class F>
auto sequential_map(const std::vector<In>& in, F f) {
  using Out = decltype(f(in[0]));
  std::vector<Out> out(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) out[i] = f(in[i]);
  return out;
}

// ---- output -------------------------------------------------------------------------------------

struct Cell {
  std::string workload;
  double param = 0;
  std::string impl;
  double items = 0;  // work items per sample (0: not applicable)
  double bytes = 0;  // payload bytes moved per sample (0: not applicable)
  std::vector<double> samples;
};

void print(const Cell& c) {
  std::string line = "{\"workload\": \"" + c.workload + "\", \"param\": ";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", c.param);
  line += buf;
  line += ", \"impl\": \"" + c.impl + "\"";
  std::snprintf(buf, sizeof buf, ", \"items\": %.17g", c.items);
  line += buf;
  std::snprintf(buf, sizeof buf, ", \"bytes\": %.17g", c.bytes);
  line += buf;
  line += ", \"samples\": [";
  for (std::size_t i = 0; i < c.samples.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s%.9g", i == 0 ? "" : ", ", c.samples[i]);
    line += buf;
  }
  line += "]}\n";
  std::fputs(line.c_str(), stdout);
  std::fflush(stdout);
}

/// Runs every (impl, body) pair `reps` times, interleaved, and prints a cell per impl.
void run_interleaved(const std::string& workload, double param, double items, double bytes, int reps,
                     const std::vector<std::pair<std::string, std::function<void()>>>& bodies) {
  std::vector<Cell> cells;
  for (const auto& [impl, body] : bodies) cells.push_back({workload, param, impl, items, bytes, {}});
  // Each repetition starts one implementation later, so that none always runs right after the
  // same other one: what one leaves behind (freed memory the allocator may hand out again, or
  // not; a cooling cache) then falls on each in turn.
  for (int r = 0; r < reps; ++r) {
    for (std::size_t j = 0; j < bodies.size(); ++j) {
      const std::size_t k = (static_cast<std::size_t>(r) + j) % bodies.size();
      cells[k].samples.push_back(time_once(bodies[k].second));
    }
  }
  for (const auto& c : cells) print(c);
}

struct Settings {
  bool smoke = false;
};

// ---- workloads ----------------------------------------------------------------------------------

/// (1) map x*x over N integers: per-item overhead and throughput.
void workload_map(const Settings& s) {
  struct Size {
    std::size_t n;
    int reps;
  };
  const std::vector<Size> sizes =
      s.smoke ? std::vector<Size>{{1'000, 3}, {10'000, 3}}
              : std::vector<Size>{{10'000, 31}, {100'000, 21}, {1'000'000, 11}, {10'000'000, 5}};
  procpool::Pool pool{kWorkers};
  (void)pool.map(square, std::vector<std::int64_t>(1000, 3));  // warm-up: workers up and running
  for (const auto& [n, reps] : sizes) {
    std::vector<std::int64_t> in(n);
    std::iota(in.begin(), in.end(), std::int64_t{0});
    const auto expect = sequential_map(in, square);
    std::vector<std::int64_t> out;
    check(pool.map(square, in) == expect, "procpool map");
    check(thread_map(in, square) == expect, "thread map");
    run_interleaved("map", static_cast<double>(n), static_cast<double>(n), 0, reps,
                    {{"procpool", [&] { out = pool.map(square, in); }},
                     {"threads", [&] { out = thread_map(in, square); }},
                     {"sequential", [&] { out = sequential_map(in, square); }}});
    check(out == expect, "map after timing");
  }
}

/// (2) N one-item tasks through submit, then get all: per-task overhead.
void workload_submit(const Settings& s) {
  const std::size_t n = s.smoke ? 1'000 : 100'000;
  const int reps = s.smoke ? 2 : 7;
  procpool::Pool pool{kWorkers};
  (void)pool.submit(square, std::int64_t{2}).get();
  Cell c{"submit", static_cast<double>(n), "procpool", static_cast<double>(n), 0, {}};
  std::vector<procpool::Future<std::int64_t>> futures;
  futures.reserve(n);
  for (int r = 0; r < reps; ++r) {
    futures.clear();
    std::int64_t sum = 0;
    c.samples.push_back(time_once([&] {
      for (std::size_t i = 0; i < n; ++i) futures.push_back(pool.submit(square, static_cast<std::int64_t>(i)));
      for (auto& f : futures) sum += f.get();
    }));
    const auto nn = static_cast<std::int64_t>(n);
    check(sum == (nn - 1) * nn * (2 * nn - 1) / 6, "submit sum");
  }
  print(c);
}

/// (3) One submit + get on an idle pool, N times in a row: latency of a round trip.
void workload_roundtrip(const Settings& s) {
  const std::size_t n = s.smoke ? 200 : 2'000;
  procpool::Pool pool{kWorkers};
  for (int i = 0; i < 50; ++i) (void)pool.submit(square, std::int64_t{i}).get();  // warm-up
  Cell c{"roundtrip", static_cast<double>(n), "procpool", 1, 0, {}};
  for (std::size_t i = 0; i < n; ++i) {
    std::int64_t v = 0;
    c.samples.push_back(time_once([&] { v = pool.submit(square, static_cast<std::int64_t>(i)).get(); }));
    check(v == static_cast<std::int64_t>(i * i), "round trip");
  }
  print(c);
}

/// (4) Pool start-up plus graceful shutdown, 2 workers; std::threads: spawn + join 2 threads.
void workload_startup(const Settings& s) {
  const int reps = s.smoke ? 3 : 21;
  run_interleaved("startup", kWorkers, 0, 0, reps,
                  {{"procpool", [] { procpool::Pool pool{kWorkers}; }},
                   {"threads",
                    [] {
                      std::vector<std::thread> ts;
                      for (std::size_t i = 0; i < kWorkers; ++i) ts.emplace_back(nothing);
                      for (auto& t : ts) t.join();
                    }},
                   // The machine's floor for any process pool: one bare fork, _exit and waitpid.
                   {"fork", [] {
                      const pid_t pid = ::fork();
                      if (pid == 0) ::_exit(0);
                      int status = 0;
                      if (pid > 0) ::waitpid(pid, &status, 0);
                    }}});
}

/// (5) CPU-bound and balanced: `tasks` busy loops of `ms` each.
void workload_balanced(const Settings& s) {
  const std::size_t tasks = s.smoke ? 8 : 64;
  const double ms = s.smoke ? 2.0 : 10.0;
  const int reps = s.smoke ? 2 : 5;
  const auto iters = static_cast<std::uint64_t>(spin_iters_per_ms() * ms);
  const std::vector<std::uint64_t> in(tasks, iters);
  const auto expect = sequential_map(in, spin);
  procpool::Pool pool{kWorkers};
  (void)pool.map(spin, std::vector<std::uint64_t>(4, 1000));
  std::vector<std::uint64_t> out;
  run_interleaved("balanced", static_cast<double>(tasks), static_cast<double>(tasks), 0, reps,
                  {{"procpool", [&] { out = pool.map(spin, in); }},
                   {"threads", [&] { out = thread_map(in, spin); }},
                   {"sequential", [&] { out = sequential_map(in, spin); }}});
  check(out == expect, "balanced");
}

/// (6) Skewed: one long busy loop first, then many short ones. Also times the long task alone
/// ("longest") so that the ideal makespan max(longest, total / workers) is known from this run.
void workload_skewed(const Settings& s) {
  const double long_ms = s.smoke ? 20.0 : 200.0;
  const double short_ms = s.smoke ? 0.02 : 0.2;
  const std::size_t shorts = s.smoke ? 100 : 1'000;
  const int reps = s.smoke ? 2 : 5;
  const double rate = spin_iters_per_ms();
  std::vector<std::uint64_t> in(1 + shorts, static_cast<std::uint64_t>(rate * short_ms));
  in[0] = static_cast<std::uint64_t>(rate * long_ms);
  const auto expect = sequential_map(in, spin);
  procpool::Pool pool{kWorkers};
  (void)pool.map(spin, std::vector<std::uint64_t>(4, 1000));
  std::vector<std::uint64_t> out;
  volatile std::uint64_t sink = 0;
  run_interleaved("skewed", static_cast<double>(in.size()), static_cast<double>(in.size()), 0, reps,
                  {{"procpool", [&] { out = pool.map(spin, in); }},
                   {"threads", [&] { out = thread_map(in, spin); }},
                   {"sequential", [&] { out = sequential_map(in, spin); }},
                   {"longest", [&] { sink = spin(in[0]); }}});
  (void)sink;
  check(out == expect, "skewed");
}

/// (7) Large payloads: map over `items` vectors of 1 MiB, each returning 1 MiB; and memcpy of the
/// same total size between two buffers already touched, for the machine's copy bandwidth.
void workload_payload(const Settings& s) {
  constexpr std::size_t mib = std::size_t{1} << 20;
  const std::size_t items = s.smoke ? 16 : 256;
  const int reps = s.smoke ? 2 : 5;
  // The pool first: forking after the inputs exist would copy page tables for them.
  procpool::Pool pool{kWorkers};
  (void)pool.map(echo, std::vector<Bytes>(2, Bytes(16, 1)));
  std::vector<Bytes> in(items);
  for (std::size_t i = 0; i < items; ++i) in[i].assign(mib, static_cast<unsigned char>(i));
  std::vector<unsigned char> src(items * mib, 7);
  std::vector<unsigned char> dst(items * mib, 0);
  // Each implementation keeps its own results, as a loop `out = f(in)` of its own would: with one
  // shared variable, whichever ran just before would hold the memory the next one could reuse.
  std::vector<Bytes> out_procpool;
  std::vector<Bytes> out_into;  // map_into's results, decoded into the same vectors every time
  std::vector<Bytes> out_threads;
  std::vector<Bytes> out_sequential;
  check(pool.map(echo, in) == in, "payload");
  const double moved = 2.0 * static_cast<double>(items * mib);  // in + out
  run_interleaved("payload", static_cast<double>(items), static_cast<double>(items), moved, reps,
                  {{"procpool", [&] { out_procpool = pool.map(echo, in); }},
                   {"procpool_into", [&] { pool.map_into(echo, in, out_into); }},
                   {"threads", [&] { out_threads = thread_map(in, echo); }},
                   {"sequential", [&] { out_sequential = sequential_map(in, echo); }}});
  for (auto* out : {&out_procpool, &out_into, &out_threads, &out_sequential}) {
    check(*out == in, "payload after timing");
    std::vector<Bytes>().swap(*out);
  }
  // memcpy: bytes copied once (read src + write dst) per sample.
  run_interleaved("payload", static_cast<double>(items), 0, static_cast<double>(items * mib), reps + 2,
                  {{"memcpy", [&] {
                      std::memcpy(dst.data(), src.data(), src.size());
                      asm volatile("" ::"r"(dst.data()) : "memory");
                    }}});
  check(dst[dst.size() / 2] == 7, "memcpy");
}

/// (8) Long items, as many as the workers and one more: n busy loops of `ms` each through map and
/// through n submits (then get on each). An idle worker must never wait while another one holds
/// an item that has not started: the makespan should be ceil(n / workers) items. Also times one
/// item alone ("longest") so that this ideal is known from this run.
void workload_long(const Settings& s) {
  const double ms = s.smoke ? 20.0 : 200.0;
  const int reps = s.smoke ? 1 : 3;
  const auto iters = static_cast<std::uint64_t>(spin_iters_per_ms() * ms);
  procpool::Pool pool{kWorkers};
  (void)pool.map(spin, std::vector<std::uint64_t>(4, 1000));
  for (int i = 0; i < 4; ++i) (void)pool.submit(spin, std::uint64_t{1000}).get();
  for (const std::size_t n : {kWorkers, kWorkers + 1}) {
    const std::vector<std::uint64_t> in(n, iters);
    const auto expect = sequential_map(in, spin);
    std::vector<std::uint64_t> out_map;
    std::vector<std::uint64_t> out_submit;
    std::vector<std::uint64_t> out_threads;
    std::vector<std::uint64_t> out_sequential;
    std::vector<procpool::Future<std::uint64_t>> futures;
    volatile std::uint64_t sink = 0;
    run_interleaved("long", static_cast<double>(n), static_cast<double>(n), 0, reps,
                    {{"procpool", [&] { out_map = pool.map(spin, in); }},
                     {"procpool_submit",
                      [&] {
                        futures.clear();
                        for (const auto x : in) futures.push_back(pool.submit(spin, x));
                        out_submit.clear();
                        for (auto& f : futures) out_submit.push_back(f.get());
                      }},
                     {"threads", [&] { out_threads = thread_map(in, spin); }},
                     {"sequential", [&] { out_sequential = sequential_map(in, spin); }},
                     {"longest", [&] { sink = spin(in[0]); }}});
    (void)sink;
    check(out_map == expect, "long map");
    check(out_submit == expect, "long submit");
    check(out_threads == expect, "long threads");
    check(out_sequential == expect, "long sequential");
  }
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  std::string workload;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--smoke") {
      s.smoke = true;
    } else if (a == "--workload" && i + 1 < argc) {
      workload = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s --workload map|submit|roundtrip|startup|balanced|skewed|payload|long [--smoke]\n",
                   argv[0]);
      return 2;
    }
  }
  const std::map<std::string, void (*)(const Settings&)> workloads = {
      {"map", workload_map},         {"submit", workload_submit},     {"roundtrip", workload_roundtrip},
      {"startup", workload_startup}, {"balanced", workload_balanced}, {"skewed", workload_skewed},
      {"payload", workload_payload}, {"long", workload_long}};
  const auto it = workloads.find(workload);
  if (it == workloads.end()) {
    std::fprintf(stderr, "procpool_bench: unknown workload '%s'\n", workload.c_str());
    return 2;
  }
  try {
    it->second(s);
  } catch (const std::exception& e) {
    fail(std::string("workload ") + workload + " threw: " + e.what());
  }
  return 0;
}
