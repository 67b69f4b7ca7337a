// The pool's Scheduler (detail/scheduler.hpp) on its own, driven by a fake Transport and a fake
// Clock: which worker gets which chunk, how large chunks are, what a worker's death, a timeout, a
// retirement, a failing initializer or a cancelled call do. No process, socket, pipe or thread is
// created: the "workers" are slots of FakeTransport, their answers results payloads built here by
// hand (ResultsHeader, failure records, values, as detail/worker.hpp writes them), their deaths
// calls to Scheduler::lost.
//
// That nothing here forks is checked by ctest ("test_scheduler: the scheduler's tests start no
// process", added by tests/CMakeLists.txt where strace is installed and no sanitizer is on), and
// can be checked by hand with
//   strace -f -e trace=process out/<dir>/tests/test_scheduler
// which must show no fork, vfork, clone or clone3 at all: only the execve of the test itself and
// its exit_group. The whole file runs in about 0.1 s (debug build).

// next_timer()'s std::optional values print as values in failure reports.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <procpool/detail/batches.hpp>
#include <procpool/detail/scheduler.hpp>
#include <procpool/error.hpp>
#include <procpool/options.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

using procpool::Decoder;
using procpool::Encoder;
using procpool::detail::Abort;
using procpool::detail::Batch;
using procpool::detail::Buffer;
using procpool::detail::Chunk;
using procpool::detail::Clock;
using procpool::detail::Job;
using procpool::detail::RemoteException;
using procpool::detail::ResultsHeader;
using procpool::detail::RunningItem;
using procpool::detail::Scheduler;
using procpool::detail::Settings;
using procpool::detail::Transport;

constexpr std::int64_t kMs = 1'000'000;
// The fake clock starts well away from 0 (a RunningItem's started_ns of 0 means "unknown").
constexpr std::int64_t kT0 = 1'000 * kMs;
// next_timer() when tick() has nothing to wait for.
const std::optional<std::chrono::nanoseconds> kNoTimer;

class FakeClock final : public Clock {
 public:
  [[nodiscard]] std::int64_t now_ns() const override { return now; }
  void advance(std::int64_t ns) { now += ns; }
  std::int64_t now = kT0;
};

/// A chunk as the fake transport received it.
struct Sent {
  std::size_t worker = 0;
  int life = 0;  // which process of the slot got it (1: the first; each boot counts one more)
  std::uint64_t id = 0;
  std::uint64_t job = 0;
  std::vector<int> items;  // every item of the chunk, skipped ones too
  std::vector<std::uint32_t> skip;
  bool idle = false;
};

/// Records what the scheduler asks of its workers; the test plays the workers' part.
class FakeTransport final : public Transport {
 public:
  explicit FakeTransport(std::size_t workers)
      : inbox(workers), running_at(workers), initialized_flag(workers, false), life(workers, 0) {}

  void lend_storage(std::size_t, Chunk&) override {}

  void send(std::size_t w, std::uint64_t id, Chunk& c, const Job&, bool idle) override {
    Sent s;
    s.worker = w;
    s.life = life[w];
    s.id = id;
    s.job = c.job_id;
    Decoder d(c.items.view());
    for (std::uint32_t k = 0; k < c.count; ++k) {
      int v = 0;
      procpool::decode(d, v);
      s.items.push_back(v);
    }
    if (d.remaining() != 0)
      protocol_errors.push_back(fmt::format("chunk {}: {} bytes after its items", id, d.remaining()));
    s.skip = c.skip;
    s.idle = idle;
    if (!held.insert({w, id}).second) protocol_errors.push_back(fmt::format("chunk {} sent twice to worker {}", id, w));
    sent.push_back(s);
    inbox[w].push_back(std::move(s));
  }

  void release(std::size_t w, std::uint64_t id, Chunk&) override {
    if (held.erase({w, id}) == 0)
      protocol_errors.push_back(fmt::format("chunk {} released by worker {}, which did not hold it", id, w));
  }
  void retire(std::size_t w) override { retired.push_back(w); }
  void kill(std::size_t w) override { killed.push_back(w); }
  void replace(std::size_t w) override { replaced.push_back(w); }
  [[nodiscard]] RunningItem running(std::size_t w) const override { return running_at[w]; }
  RunningItem withdraw(std::size_t w, std::uint64_t id, std::uint32_t from) override {
    withdrawals.push_back({w, id, from});
    // The worker may have started an item between the scheduler's look and the withdrawal.
    if (started_during_withdrawal) running_at[w] = *std::exchange(started_during_withdrawal, std::nullopt);
    return running_at[w];
  }
  [[nodiscard]] bool initialized(std::size_t w) const override { return initialized_flag[w]; }
  [[nodiscard]] std::string describe(std::size_t w) const override { return fmt::format("worker {} (fake)", w); }
  [[nodiscard]] bool on_callers_cpu(std::size_t w) const override { return callers_cpu.count(w) != 0; }

  /// The sizes of the chunks sent, in order.
  [[nodiscard]] std::vector<std::size_t> sizes() const {
    std::vector<std::size_t> out;
    for (const Sent& s : sent) out.push_back(s.items.size());
    return out;
  }
  /// The workers chunks went to, in order.
  [[nodiscard]] std::vector<std::size_t> receivers() const {
    std::vector<std::size_t> out;
    for (const Sent& s : sent) out.push_back(s.worker);
    return out;
  }

  std::vector<Sent> sent;
  std::vector<std::deque<Sent>> inbox;                   // per worker: chunks not answered yet, oldest first
  std::set<std::pair<std::size_t, std::uint64_t>> held;  // (worker, chunk) sent and not released
  std::vector<std::string> protocol_errors;              // misuse of the Transport interface
  std::vector<std::size_t> retired, killed, replaced;
  std::vector<RunningItem> running_at;
  struct Withdrawal {
    std::size_t worker;
    std::uint64_t chunk;
    std::uint32_t from;
    bool operator==(const Withdrawal&) const = default;
  };
  std::vector<Withdrawal> withdrawals;
  std::optional<RunningItem> started_during_withdrawal;  // what the worker starts as a withdrawal is posted
  std::vector<bool> initialized_flag;
  std::vector<int> life;
  std::set<std::size_t> callers_cpu;
};

/// A call of the test's own: items are ints (input i is first + i), a worker's value for an item is
/// twice its input. It records every outcome and how often the scheduler read its input.
class IntBatch final : public Batch {
 public:
  explicit IntBatch(std::size_t n, int first = 100, std::size_t chunk = 0) : outcomes(n, 0), values(n), errors(n) {
    for (std::size_t i = 0; i < n; ++i) inputs.push_back(first + static_cast<int>(i));
    set_known_total(n);
    set_chunk_size(chunk);
  }

  std::size_t encode_next(std::size_t max_items, std::size_t max_bytes, Buffer& out) override {
    ++encode_calls;
    Encoder e(out);
    const std::size_t start = out.size();
    std::size_t n = 0;
    while (n < max_items && next < inputs.size() && (n == 0 || out.size() - start < max_bytes)) {
      if (throw_at && next == *throw_at) throw std::runtime_error(fmt::format("input {} is unreadable", next));
      procpool::encode(e, inputs[next]);
      ++next;
      ++n;
    }
    return n;
  }
  void accept_value(std::size_t index, Decoder& in) override {
    int v = 0;
    procpool::decode(in, v);
    if (reject_value_at && index == *reject_value_at)
      throw std::invalid_argument(fmt::format("value {} of item {} fails validation", v, index));
    values.at(index) = v;
    ++outcomes.at(index);
  }
  void discard_value(Decoder& in) override {
    int v = 0;
    procpool::decode(in, v);
    ++discarded;
  }
  void accept_error(std::size_t index, std::exception_ptr error) override {
    errors.at(index) = std::move(error);
    ++outcomes.at(index);
  }
  void on_progress() override { ++progress_calls; }

  /// As MapOptions::task_timeout and timeout.
  void limit(std::chrono::nanoseconds task_timeout, std::chrono::nanoseconds timeout) {
    set_time_limits(task_timeout, timeout);
  }

  /// Every item has exactly one outcome.
  [[nodiscard]] bool each_item_has_one_outcome() const {
    return std::all_of(outcomes.begin(), outcomes.end(), [](int n) { return n == 1; });
  }
  /// Whether item i has the value its worker computed (twice its input).
  [[nodiscard]] bool has_value(std::size_t i) const { return values.at(i) == inputs.at(i) * 2 && !errors.at(i); }

  std::vector<int> inputs;
  std::size_t next = 0;
  std::optional<std::size_t> throw_at;         // encode_next throws on reaching this input
  std::optional<std::size_t> reject_value_at;  // accept_value throws for this item
  std::vector<int> outcomes;                   // per item: how many outcomes it got
  std::vector<std::optional<int>> values;
  std::vector<std::exception_ptr> errors;
  int encode_calls = 0;
  int progress_calls = 0;
  int discarded = 0;  // values read past because the call was stopped while they were out
};

/// What an item's failure says.
struct Failure {
  std::string kind;
  std::string what;
  std::optional<std::size_t> item;
  int exitcode = 0;
};

Failure failure_of(const std::exception_ptr& p) {
  if (!p) return {"none", "", std::nullopt, 0};
  try {
    std::rethrow_exception(p);
  } catch (const procpool::ProcessError& e) {
    return {"ProcessError", e.what(), e.item(), e.exitcode()};
  } catch (const procpool::TimeoutError& e) {
    return {"TimeoutError", e.what(), e.item(), 0};
  } catch (const procpool::CancelledError& e) {
    return {"CancelledError", e.what(), std::nullopt, 0};
  } catch (const procpool::RemoteError& e) {
    return {"RemoteError", e.what(), e.item(), 0};
  } catch (const procpool::Error& e) {
    return {"Error", e.what(), std::nullopt, 0};
  } catch (const std::invalid_argument& e) {
    return {"std::invalid_argument", e.what(), std::nullopt, 0};
  } catch (const std::exception& e) {
    return {"std::exception", e.what(), std::nullopt, 0};
  } catch (...) {
    return {"unknown", "", std::nullopt, 0};
  }
}

Settings with_workers(std::size_t workers) {
  Settings s;
  s.workers = workers;
  return s;
}

/// A scheduler, its fake transport and clock, and the test's hands on the workers.
struct Rig {
  explicit Rig(Settings s) : settings(std::move(s)), transport(settings.workers), sched(settings, transport, clock) {}

  /// As LocalTransport::start: every slot asked for, then each one running (and its initializer
  /// done, if `ready`); then the pool is open.
  void start(bool ready = true) {
    for (std::size_t w = 0; w < settings.workers; ++w) sched.request_worker(w);
    for (std::size_t w = 0; w < settings.workers; ++w) boot(w, ready);
    sched.lifecycle().started();
  }

  /// A (new) process serves slot w.
  void boot(std::size_t w, bool ready = true) {
    transport.inbox[w].clear();
    transport.running_at[w] = RunningItem{};
    transport.initialized_flag[w] = false;
    ++transport.life[w];
    sched.started(w);
    if (ready) initialized(w);
  }
  void initialized(std::size_t w) {
    transport.initialized_flag[w] = true;
    sched.ready(w);
  }

  /// The process of slot w is gone (what it held is lost with it).
  void die(std::size_t w, int exitcode, RunningItem at) {
    transport.inbox[w].clear();
    transport.running_at[w] = RunningItem{};
    sched.lost(w, exitcode, at);
  }

  /// Registers a job and queues b under it (`job_key`: batches with the same key share a job).
  template <class B>
  std::shared_ptr<B> add(std::shared_ptr<B> b, std::uintptr_t job_key = 1) {
    sched.add(b, sched.register_job(0x1000 + job_key, {}));
    return b;
  }
  std::shared_ptr<IntBatch> add_ints(std::size_t n, std::size_t chunk = 0, int first = 100,
                                     std::uintptr_t job_key = 1) {
    return add(std::make_shared<IntBatch>(n, first, chunk), job_key);
  }

  /// w answers the oldest chunk it holds: every open item's value is twice its input, except the
  /// items `fail` names (local index -> the exception the task threw). `compute_ns`: the time the
  /// worker reports for the whole chunk (chunk sizing learns from it).
  void answer(std::size_t w, std::uint64_t compute_ns, const std::map<std::uint32_t, RemoteException>& fail = {}) {
    REQUIRE(!transport.inbox[w].empty());
    const Sent s = transport.inbox[w].front();
    transport.inbox[w].pop_front();
    sched.results(w, s.id, results_payload(s, compute_ns, fail).view(), {});
  }

  /// w answers its oldest chunk with items [0, answered) only: it saw a withdrawal there.
  void answer_part(std::size_t w, std::uint32_t answered) {
    REQUIRE(!transport.inbox[w].empty());
    const Sent s = transport.inbox[w].front();
    transport.inbox[w].pop_front();
    sched.results(w, s.id, results_payload(s, 1000, {}, answered).view(), {});
  }

  static Buffer results_payload(const Sent& s, std::uint64_t compute_ns,
                                const std::map<std::uint32_t, RemoteException>& fail = {},
                                std::optional<std::uint32_t> answered = std::nullopt) {
    Buffer values;
    Buffer failures;
    Encoder ev(values);
    Encoder ef(failures);
    std::uint32_t failed = 0;
    const std::uint32_t answered_count = answered.value_or(static_cast<std::uint32_t>(s.items.size()));
    for (std::uint32_t local = 0; local < answered_count; ++local) {
      if (std::binary_search(s.skip.begin(), s.skip.end(), local)) continue;
      if (const auto f = fail.find(local); f != fail.end()) {
        ef.write_bytes(&local, sizeof local);
        procpool::encode(ef, f->second);
        ++failed;
        continue;
      }
      procpool::encode(ev, s.items[local] * 2);
    }
    const ResultsHeader h{
        static_cast<std::uint32_t>(s.items.size()), failed, failures.size(), compute_ns, 0, answered_count, 0};
    Buffer payload;
    payload.append(&h, sizeof h);
    payload.append(failures.data(), failures.size());
    payload.append(values.data(), values.size());
    return payload;
  }

  /// Answers whatever the workers hold (each chunk costing `ns_per_item` per item) and dispatches,
  /// until nothing is out.
  void run_to_end(std::uint64_t ns_per_item = 1000) {
    sched.dispatch();
    for (bool any = true; any;) {
      any = false;
      for (std::size_t w = 0; w < settings.workers; ++w) {
        if (transport.inbox[w].empty()) continue;
        answer(w, ns_per_item * transport.inbox[w].front().items.size());
        any = true;
      }
      sched.dispatch();
    }
  }

  /// The job's cost per item becomes known: one batch of `n` items, answered at `ns_per_item`.
  void measure(std::uint64_t ns_per_item, std::size_t n = 4, std::uintptr_t job_key = 1) {
    const auto b = add_ints(n, n, 0, job_key);
    sched.dispatch();
    for (std::size_t w = 0; w < settings.workers; ++w)
      while (!transport.inbox[w].empty()) answer(w, ns_per_item * transport.inbox[w].front().items.size());
    REQUIRE(b->finished());
    transport.sent.clear();
  }

  Settings settings;
  FakeClock clock;
  FakeTransport transport;
  Scheduler sched;
};

std::vector<std::size_t> indices(std::size_t first, std::size_t last) {
  std::vector<std::size_t> out;
  for (std::size_t i = first; i < last; ++i) out.push_back(i);
  return out;
}

}  // namespace

// ---- fairness --------------------------------------------------------------------------------

TEST_CASE("an idle worker gets a chunk before any worker gets a second one") {
  Rig rig(with_workers(3));
  rig.start();
  rig.measure(1000);  // short items: a second chunk may wait behind a first one

  const auto b = rig.add_ints(1000);
  rig.sched.dispatch();

  REQUIRE(rig.transport.receivers() == std::vector<std::size_t>{0, 1, 2, 0, 1, 2});
  for (std::size_t k = 0; k < 3; ++k) CHECK(rig.transport.sent[k].idle);
  for (std::size_t k = 3; k < 6; ++k) CHECK_FALSE(rig.transport.sent[k].idle);
  rig.run_to_end();
  CHECK(b->finished());
  CHECK(b->each_item_has_one_outcome());
  CHECK(rig.transport.held.empty());
  CHECK(rig.transport.protocol_errors.empty());
}

TEST_CASE("before a job's cost is known each worker holds one chunk") {
  Rig rig(with_workers(2));
  rig.start();
  const auto b = rig.add_ints(100);
  rig.sched.dispatch();

  // Unmeasured: 4 items each, and nothing queued behind them.
  CHECK(rig.transport.receivers() == std::vector<std::size_t>{0, 1});
  CHECK(rig.transport.sizes() == std::vector<std::size_t>{4, 4});
  CHECK(rig.transport.sent[0].items == std::vector<int>{100, 101, 102, 103});
  CHECK(rig.transport.sent[1].items == std::vector<int>{104, 105, 106, 107});
  rig.sched.dispatch();
  CHECK(rig.transport.sent.size() == 2);
  CHECK(b->dispatched() == 8);
}

TEST_CASE("no second chunk is queued behind a chunk measured as long") {
  Rig rig(with_workers(2));
  rig.start();
  const auto b = rig.add_ints(100);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 2);

  // Worker 0 reports 5 ms per item: chunks shrink to one item (about 1 ms of work cannot be less),
  // and a chunk of 5 ms or more is long, so nothing waits behind one.
  rig.answer(0, 4 * 5 * kMs);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 3);
  CHECK(rig.transport.sent[2].worker == 0);
  CHECK(rig.transport.sent[2].items == std::vector<int>{108});
  rig.sched.dispatch();
  CHECK(rig.transport.sent.size() == 3);  // neither worker gets a second chunk
  CHECK(rig.transport.inbox[0].size() == 1);
  CHECK(rig.transport.inbox[1].size() == 1);
  CHECK(b->dispatched() == 9);
}

TEST_CASE("a worker on the caller's CPU is served after the others") {
  Rig rig(with_workers(2));
  rig.transport.callers_cpu = {0};
  rig.start();
  const auto lone = rig.add_ints(1);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 1);
  CHECK(rig.transport.sent[0].worker == 1);

  const auto b = rig.add_ints(100);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 2);
  CHECK(rig.transport.sent[1].worker == 0);  // worker 1 holds an unmeasured chunk already
  rig.run_to_end();
  CHECK(lone->has_value(0));
  CHECK(b->each_item_has_one_outcome());
}

TEST_CASE("single-item calls of one job travel together in one chunk") {
  Rig rig(with_workers(1));
  rig.start();
  std::vector<std::shared_ptr<IntBatch>> calls;
  for (int k = 0; k < 10; ++k) calls.push_back(rig.add_ints(1, 0, 100 + k));
  rig.sched.dispatch();

  // Ten items of one job for one worker: 10 / (2 * 1) = 5, capped by the unmeasured size 4.
  REQUIRE(rig.transport.sent.size() == 1);
  CHECK(rig.transport.sent[0].items == std::vector<int>{100, 101, 102, 103});
  rig.run_to_end();
  for (int k = 0; k < 10; ++k) {
    INFO("call " << k);
    CHECK(calls[static_cast<std::size_t>(k)]->finished());
    CHECK(calls[static_cast<std::size_t>(k)]->values[0] == (100 + k) * 2);
  }
}

// ---- chunk sizing --------------------------------------------------------------------------

TEST_CASE("automatic chunks hold about a millisecond of measured work") {
  Rig rig(with_workers(2));
  rig.start();
  const auto b = rig.add_ints(100'000);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sizes() == std::vector<std::size_t>{4, 4});

  rig.answer(0, 4 * 250);  // 250 ns per item: 1 ms is 4000 items
  rig.sched.dispatch();
  // Worker 0 gets 4000; 4000 * 250 ns = 1 ms is short, so a second chunk may wait behind it, and
  // behind worker 1's 4 items.
  CHECK(rig.transport.receivers() == std::vector<std::size_t>{0, 1, 0, 0, 1});
  CHECK(rig.transport.sizes() == std::vector<std::size_t>{4, 4, 4000, 4000, 4000});

  // Worker 1's 4 items took 1 us each: the estimate (smoothed) is now 625 ns per item, so the 4000
  // items it holds are expected to take 2.5 ms, too long to queue anything behind.
  rig.answer(1, 4 * 1000);
  rig.sched.dispatch();
  CHECK(rig.transport.sent.size() == 5);
  rig.answer(1, 4000 * 625);
  rig.sched.dispatch();
  // 1 ms / 625 ns = 1600 items, and as they are short, another 1600 behind them.
  CHECK(rig.transport.sizes() == std::vector<std::size_t>{4, 4, 4000, 4000, 4000, 1600, 1600});
  CHECK(rig.transport.receivers() == std::vector<std::size_t>{0, 1, 0, 0, 1, 1, 1});
  CHECK(b->dispatched() == 8 + 3 * 4000 + 2 * 1600);
}

TEST_CASE("a chunk is never so large that the tail of the input cannot be balanced") {
  Rig rig(with_workers(2));
  rig.start();
  rig.measure(250);  // 1 ms would be 4000 items
  const auto b = rig.add_ints(40);
  rig.run_to_end(250);
  REQUIRE(b->finished());
  CHECK(b->each_item_has_one_outcome());

  // Each chunk holds at most what is left undispatched / (2 * workers), and at least one item.
  const std::vector<std::size_t> sizes = rig.transport.sizes();
  std::size_t left = 40;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    INFO("chunk " << k << " of " << sizes[k] << " items, " << left << " left before it");
    CHECK(sizes[k] == std::max<std::size_t>(1, left / 4));
    left -= sizes[k];
  }
  CHECK(sizes.size() >= 8);
  CHECK(sizes.front() == 10);
}

TEST_CASE("a call's chunk_size overrides the pool's setting and the automatic size") {
  Settings s = with_workers(1);
  s.chunk_size = 5;
  Rig rig(std::move(s));
  rig.start();
  rig.measure(10 * kMs, 5);  // long items: automatic chunks would be one item

  const auto pools = rig.add_ints(12);
  rig.run_to_end(10 * kMs);
  CHECK(rig.transport.sizes() == std::vector<std::size_t>{5, 5, 2});
  CHECK(pools->each_item_has_one_outcome());

  rig.transport.sent.clear();
  const auto own = rig.add_ints(12, 7);
  rig.run_to_end(10 * kMs);
  CHECK(rig.transport.sizes() == std::vector<std::size_t>{7, 5});
  CHECK(own->each_item_has_one_outcome());
}

TEST_CASE("a DenseBatch's MapOptions chunk_size sets its chunks, and its values come back in order") {
  Rig rig(with_workers(1));
  rig.start();
  const std::vector<int> input{1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  using It = std::vector<int>::const_iterator;
  procpool::MapOptions options;
  options.chunk_size = 3;
  const auto b = rig.add(std::make_shared<procpool::detail::DenseBatch<It, It, int, int>>(input.begin(), input.end(),
                                                                                          input.size(), options));
  rig.run_to_end();
  CHECK(rig.transport.sizes() == std::vector<std::size_t>{3, 3, 3, 1});
  REQUIRE(b->finished());
  CHECK(b->take_values() == std::vector<int>{2, 4, 6, 8, 10, 12, 14, 16, 18, 20});
}

// ---- skew --------------------------------------------------------------------------------------

TEST_CASE("a slow item holds no other item when the job is known to be long") {
  Rig rig(with_workers(2));
  rig.start();
  rig.measure(3 * kMs);  // one-item chunks, none queued behind another
  const auto b = rig.add_ints(10);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 2);
  const Sent slow = rig.transport.sent[0];
  REQUIRE(slow.worker == 0);
  rig.transport.running_at[0] = RunningItem{slow.id, 0, rig.clock.now};

  // Worker 0 never finishes its item; worker 1 runs every other one.
  for (int round = 0; round < 20 && !rig.transport.inbox[1].empty(); ++round) {
    rig.clock.advance(3 * kMs);
    rig.answer(1, 3 * kMs);
    rig.sched.dispatch();
  }
  CHECK(b->completed() == 9);
  CHECK(b->source_done());
  CHECK_FALSE(b->has_value(0));
  for (std::size_t i = 1; i < 10; ++i) CHECK(b->has_value(i));
  for (std::size_t k = 1; k < rig.transport.sent.size(); ++k) CHECK(rig.transport.sent[k].worker == 1);
}

// Worker 1 measured the job as cheap, but worker 0 has been stuck in item 0 for 50 ms (its chunk
// was expected to take 2 us): nothing more is queued behind it, so worker 1 runs everything else.
TEST_CASE("a chunk is not queued behind an item that has overrun its expected time") {
  Rig rig(with_workers(2));
  rig.start();
  const auto b = rig.add_ints(8);
  rig.sched.dispatch();
  // 8 / (2 * 2) = 2 items, then 6 / 4 = 1.
  REQUIRE(rig.transport.sizes() == std::vector<std::size_t>{2, 1});
  const Sent slow = rig.transport.sent[0];
  rig.transport.running_at[0] = RunningItem{slow.id, 0, rig.clock.now};

  rig.clock.advance(50 * kMs);
  rig.answer(1, 1000);  // 1 us per item
  rig.sched.dispatch();
  for (int round = 0; round < 20 && !rig.transport.inbox[1].empty(); ++round) {
    rig.answer(1, 1000 * rig.transport.inbox[1].front().items.size());
    rig.sched.dispatch();
  }

  // Items 0 and 1 wait for worker 0; everything else should have run on worker 1.
  std::vector<std::size_t> after_first_chunk;
  for (std::size_t k = 1; k < rig.transport.sent.size(); ++k) after_first_chunk.push_back(rig.transport.sent[k].worker);
  CHECK(std::count(after_first_chunk.begin(), after_first_chunk.end(), std::size_t{0}) == 0);
  CHECK(b->completed() == 6);
}

// ---- deaths --------------------------------------------------------------------------------

TEST_CASE("a worker killed in the middle of a chunk fails that item; the rest of the chunk runs first elsewhere") {
  Rig rig(with_workers(2));
  rig.start();
  const auto b = rig.add_ints(12, 4);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sizes() == std::vector<std::size_t>{4, 4});
  const Sent first = rig.transport.sent[0];
  REQUIRE(first.worker == 0);

  rig.die(0, -9, RunningItem{first.id, 1, rig.clock.now});
  // Slot 0 is asked for a new process.
  CHECK(rig.transport.replaced == std::vector<std::size_t>{0, 1, 0});
  const Failure f = failure_of(b->errors[1]);
  CHECK(f.kind == "ProcessError");
  CHECK(f.item == std::optional<std::size_t>{1});
  CHECK(f.exitcode == -9);
  CHECK(f.what ==
        "procpool::Pool: worker 0 (fake) was killed by signal 9 (SIGKILL) while running item 1; the worker was "
        "replaced");
  CHECK(b->completed() == 1);

  // Worker 1 finishes, and takes the rest of the dead chunk before any new item.
  rig.answer(1, 4 * 5 * kMs);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 3);
  const Sent again = rig.transport.sent[2];
  CHECK(again.worker == 1);
  CHECK(again.id == first.id);
  CHECK(again.items == first.items);
  CHECK(again.skip == std::vector<std::uint32_t>{1});
  rig.answer(1, 3 * 5 * kMs);

  rig.boot(0);
  rig.run_to_end(5 * kMs);
  REQUIRE(b->finished());
  CHECK(b->each_item_has_one_outcome());
  for (const std::size_t i : indices(0, 12))
    if (i != 1) CHECK(b->has_value(i));
  CHECK(rig.transport.held.empty());
  CHECK(rig.transport.protocol_errors.empty());
}

TEST_CASE("a death in the second of two chunks in flight re-queues both, in their order") {
  Rig rig(with_workers(1));
  rig.start();
  rig.measure(1000);
  const auto b = rig.add_ints(40, 5);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sizes() == std::vector<std::size_t>{5, 5});
  const Sent one = rig.transport.sent[0];
  const Sent two = rig.transport.sent[1];

  // Worker 0 dies in item 2 of its first chunk: the second chunk was not started.
  rig.die(0, -11, RunningItem{one.id, 2, rig.clock.now});
  CHECK(failure_of(b->errors[2]).exitcode == -11);
  rig.boot(0);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 4);
  CHECK(rig.transport.sent[2].id == one.id);
  CHECK(rig.transport.sent[2].skip == std::vector<std::uint32_t>{2});
  CHECK(rig.transport.sent[3].id == two.id);
  CHECK(rig.transport.sent[3].skip.empty());
  rig.run_to_end();
  CHECK(b->each_item_has_one_outcome());
  CHECK(rig.transport.held.empty());
}

TEST_CASE("a worker that dies outside any item has its chunk run again, three times at most") {
  Rig rig(with_workers(1));
  rig.start();
  const auto b = rig.add_ints(4, 4);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 1);
  const std::uint64_t id = rig.transport.sent[0].id;

  for (int death = 1; death <= 2; ++death) {
    INFO("death " << death);
    rig.die(0, -9, RunningItem{});
    CHECK(b->completed() == 0);
    rig.boot(0);
    rig.sched.dispatch();
    REQUIRE(rig.transport.sent.size() == static_cast<std::size_t>(death) + 1);
    CHECK(rig.transport.sent.back().id == id);
    CHECK(rig.transport.sent.back().skip.empty());
  }
  rig.die(0, -9, RunningItem{});
  REQUIRE(b->finished());
  CHECK(b->each_item_has_one_outcome());
  for (const std::size_t i : indices(0, 4)) {
    const Failure f = failure_of(b->errors[i]);
    CHECK(f.kind == "Error");
    CHECK(f.what == fmt::format("procpool::Pool: worker 0 (fake) was killed by signal 9 (SIGKILL) three times while "
                                "handling the chunk holding item {}",
                                i));
  }
  // Deaths outside the initializer do not break the pool: the slot is filled again each time.
  CHECK_FALSE(rig.sched.lifecycle().broken());
  CHECK(rig.transport.replaced == std::vector<std::size_t>{0, 0, 0, 0});
  CHECK(rig.transport.held.empty());
}

TEST_CASE("a task's exception comes back as a RemoteError naming its item") {
  Rig rig(with_workers(1));
  rig.start();
  const auto b = rig.add_ints(4, 4);
  rig.sched.dispatch();
  rig.answer(0, 4000, {{2, RemoteException{"std::domain_error", "bad input 102"}}});
  REQUIRE(b->finished());
  const Failure f = failure_of(b->errors[2]);
  CHECK(f.kind == "RemoteError");
  CHECK(f.item == std::optional<std::size_t>{2});
  CHECK(f.what == "procpool::Pool: item 2 in worker 0 (fake) threw std::domain_error: bad input 102");
  CHECK(b->has_value(0));
  CHECK(b->has_value(1));
  CHECK(b->has_value(3));
  CHECK(b->each_item_has_one_outcome());
}

TEST_CASE("a value the caller's code rejects fails that item, and the items after it run again") {
  Rig rig(with_workers(1));
  rig.start();
  const auto b = rig.add_ints(4, 4);
  b->reject_value_at = 1;
  rig.sched.dispatch();
  const Sent first = rig.transport.sent.at(0);
  rig.answer(0, 4000);

  const Failure f = failure_of(b->errors[1]);
  CHECK(f.kind == "std::invalid_argument");
  CHECK(f.what == "value 202 of item 1 fails validation");
  CHECK(b->has_value(0));
  CHECK(b->completed() == 2);

  b->reject_value_at.reset();
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 2);
  CHECK(rig.transport.sent[1].id == first.id);
  CHECK(rig.transport.sent[1].skip == std::vector<std::uint32_t>{0, 1});
  rig.answer(0, 2000);
  REQUIRE(b->finished());
  CHECK(b->has_value(2));
  CHECK(b->has_value(3));
  CHECK(b->each_item_has_one_outcome());
  CHECK(rig.transport.held.empty());
}

TEST_CASE("malformed results are refused with DecodeError, and give_up fails what the worker held") {
  Rig rig(with_workers(1));
  rig.start();
  const auto b = rig.add_ints(4, 4);
  rig.sched.dispatch();
  Sent s = rig.transport.inbox[0].front();
  s.items.pop_back();  // a header claiming 3 items for a chunk of 4
  CHECK_THROWS_AS(rig.sched.results(0, s.id, Rig::results_payload(s, 1000).view(), {}), procpool::DecodeError);
  CHECK_THROWS_AS(rig.sched.results(0, s.id + 1, Rig::results_payload(s, 1000).view(), {}), procpool::DecodeError);
  CHECK(b->completed() == 0);

  rig.sched.give_up(0, "procpool::Pool: the result of ", " could not be read");
  CHECK(rig.transport.killed == std::vector<std::size_t>{0});
  REQUIRE(b->finished());
  CHECK(failure_of(b->errors[3]).what == "procpool::Pool: the result of item 3 could not be read");
  rig.die(0, -9, RunningItem{});
  CHECK(rig.transport.replaced == std::vector<std::size_t>{0, 0});
  CHECK(b->each_item_has_one_outcome());
  CHECK(rig.transport.held.empty());
}

// ---- timeouts ------------------------------------------------------------------------------

TEST_CASE("an item that outruns the task timeout gets its worker killed and fails with TimeoutError") {
  Settings s = with_workers(1);
  s.task_timeout = std::chrono::milliseconds(10);
  Rig rig(std::move(s));
  rig.start();
  const auto b = rig.add_ints(4, 4);
  rig.sched.dispatch();
  const Sent chunk = rig.transport.sent.at(0);
  const std::int64_t item_started = rig.clock.now + 3 * kMs;
  rig.transport.running_at[0] = RunningItem{chunk.id, 2, item_started};

  rig.clock.now = item_started + 10 * kMs - 1;
  rig.sched.tick();
  CHECK(rig.transport.killed.empty());
  CHECK(rig.sched.next_timer() == std::optional<std::chrono::nanoseconds>(1));

  rig.clock.advance(1);
  rig.sched.tick();
  CHECK(rig.transport.killed == std::vector<std::size_t>{0});
  rig.sched.tick();
  CHECK(rig.transport.killed.size() == 1);  // killed once

  rig.die(0, -9, RunningItem{chunk.id, 2, item_started});
  const Failure f = failure_of(b->errors[2]);
  CHECK(f.kind == "TimeoutError");
  CHECK(f.item == std::optional<std::size_t>{2});
  CHECK(f.what ==
        "procpool::Pool: item 2 ran longer than the task timeout of 10 ms; worker 0 (fake) was killed and replaced");

  // Replaced; the other items run again on the new worker.
  CHECK(rig.transport.replaced == std::vector<std::size_t>{0, 0});
  rig.boot(0);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 2);
  CHECK(rig.transport.sent[1].skip == std::vector<std::uint32_t>{2});
  rig.answer(0, 3000);
  REQUIRE(b->finished());
  CHECK(b->has_value(0));
  CHECK(b->has_value(1));
  CHECK(b->has_value(3));
  CHECK(b->each_item_has_one_outcome());
}

// After tick() killed a worker for the timeout it has nothing more to do for that worker until
// the death is reported: next_timer() must not answer 0 (the driver would poll without sleeping).
TEST_CASE("once a worker is killed for its timeout, next_timer does not ask for an immediate tick") {
  Settings s = with_workers(1);
  s.task_timeout = std::chrono::milliseconds(10);
  Rig rig(std::move(s));
  rig.start();
  const auto b = rig.add_ints(4, 4);
  rig.sched.dispatch();
  rig.transport.running_at[0] = RunningItem{rig.transport.sent.at(0).id, 0, rig.clock.now};
  rig.clock.advance(10 * kMs);
  rig.sched.tick();
  REQUIRE(rig.transport.killed.size() == 1);
  rig.clock.advance(kMs);
  CHECK(rig.sched.next_timer() == kNoTimer);
}

// tick() saw item 2 past the timeout and killed the worker; before the kill landed, item 2
// finished and item 3 started. Item 2 is the one that outran the timeout; item 3 runs again.
TEST_CASE("an item that started just before its worker was killed for a timeout is not blamed for it") {
  Settings s = with_workers(1);
  s.task_timeout = std::chrono::milliseconds(10);
  Rig rig(std::move(s));
  rig.start();
  const auto b = rig.add_ints(4, 4);
  rig.sched.dispatch();
  const std::uint64_t id = rig.transport.sent.at(0).id;
  rig.transport.running_at[0] = RunningItem{id, 2, rig.clock.now};
  rig.clock.advance(10 * kMs);
  rig.sched.tick();
  REQUIRE(rig.transport.killed.size() == 1);

  rig.clock.advance(1000);
  rig.die(0, -9, RunningItem{id, 3, rig.clock.now - 1000});
  rig.boot(0);
  rig.run_to_end();
  REQUIRE(b->finished());
  CHECK(b->each_item_has_one_outcome());
  for (const std::size_t i : {0, 1, 3}) {
    INFO("item " << i << ": " << failure_of(b->errors[i]).what);
    CHECK(failure_of(b->errors[i]).kind != "TimeoutError");
  }
  CHECK(b->has_value(3));
}

TEST_CASE("an initializer that outruns the task timeout breaks the pool") {
  Settings s = with_workers(1);
  s.task_timeout = std::chrono::milliseconds(10);
  s.initializer = [] {};
  Rig rig(std::move(s));
  rig.start(/*ready=*/false);
  const auto b = rig.add_ints(6, 2);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 1);  // it waits in the worker until the initializer returns
  CHECK(rig.sched.next_timer() == std::optional<std::chrono::nanoseconds>(10 * kMs));

  rig.clock.advance(10 * kMs - 1);
  rig.sched.tick();
  CHECK(rig.transport.killed.empty());
  rig.clock.advance(1);
  rig.sched.tick();
  CHECK(rig.transport.killed == std::vector<std::size_t>{0});

  rig.die(0, -9, RunningItem{});
  const std::string reason =
      "procpool::Pool: the initializer ran longer than the task timeout of 10 ms in worker 0 (fake), which was "
      "killed; the pool cannot start workers (make the initializer return sooner, or raise task_timeout)";
  REQUIRE(rig.sched.lifecycle().broken());
  CHECK(rig.sched.lifecycle().broken_reason() == reason);
  CHECK(rig.transport.replaced == std::vector<std::size_t>{0});  // not replaced
  REQUIRE(b->finished());
  CHECK(failure_of(b->errors[0]).what == "procpool::Pool: item 0 did not complete: " + reason);
  CHECK(failure_of(b->errors[5]).what == "procpool::Pool: item 5 did not run: " + reason);
  CHECK(b->each_item_has_one_outcome());
  CHECK(rig.transport.held.empty());
}

TEST_CASE("without an initializer a worker's slow start-up is not timed and does not break the pool") {
  Settings s = with_workers(1);
  s.task_timeout = std::chrono::microseconds(500);
  Rig rig(std::move(s));
  rig.start(/*ready=*/false);
  CHECK(rig.sched.next_timer() == kNoTimer);
  rig.clock.advance(50 * kMs);  // far past the timeout, the worker still starting up
  rig.sched.tick();
  CHECK(rig.transport.killed.empty());
  CHECK_FALSE(rig.sched.lifecycle().broken());
}

TEST_CASE("a task timeout in microseconds is named in microseconds") {
  Settings s = with_workers(1);
  s.task_timeout = std::chrono::microseconds(500);
  Rig rig(std::move(s));
  rig.start();
  const auto b = rig.add_ints(1, 1);
  rig.sched.dispatch();
  const std::uint64_t id = rig.transport.sent.at(0).id;
  rig.transport.running_at[0] = RunningItem{id, 0, rig.clock.now};
  rig.clock.advance(500 * 1000);
  rig.sched.tick();
  REQUIRE(rig.transport.killed == std::vector<std::size_t>{0});
  rig.die(0, -9, RunningItem{id, 0, rig.clock.now - 500 * 1000});
  const Failure f = failure_of(b->errors[0]);
  CHECK(f.kind == "TimeoutError");
  CHECK(f.what ==
        "procpool::Pool: item 0 ran longer than the task timeout of 500 us; worker 0 (fake) was killed and replaced");
}

TEST_CASE("next_timer says when tick has something to do") {
  Settings s = with_workers(2);
  s.task_timeout = std::chrono::milliseconds(10);
  s.initializer = [] {};
  Rig rig(std::move(s));
  for (std::size_t w = 0; w < 2; ++w) rig.sched.request_worker(w);
  rig.boot(0);
  rig.boot(1, /*ready=*/false);  // its initializer started at kT0
  rig.sched.lifecycle().started();

  rig.clock.advance(4 * kMs);
  CHECK(rig.sched.next_timer() == std::optional<std::chrono::nanoseconds>(6 * kMs));
  rig.initialized(1);
  CHECK(rig.sched.next_timer() == kNoTimer);  // nothing runs, nothing to wait for

  // A chunk in flight whose item has not started yet: a whole timeout from now at the latest.
  const auto b = rig.add_ints(2, 1);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 2);
  CHECK(rig.sched.next_timer() == std::optional<std::chrono::nanoseconds>(10 * kMs));
  // Item started 3 ms ago on worker 1: 7 ms left.
  rig.transport.running_at[1] = RunningItem{rig.transport.sent[1].id, 0, rig.clock.now - 3 * kMs};
  CHECK(rig.sched.next_timer() == std::optional<std::chrono::nanoseconds>(7 * kMs));
  rig.clock.advance(8 * kMs);  // overdue: now
  CHECK(rig.sched.next_timer() == std::optional<std::chrono::nanoseconds>(0));
  rig.transport.running_at[1] = RunningItem{};
  rig.answer(0, 1000);
  rig.answer(1, 1000);
  CHECK(b->finished());
  CHECK(rig.sched.next_timer() == kNoTimer);

  // A slot whose worker could not be started is asked for again after kRespawnDelayNs.
  rig.die(0, -9, RunningItem{});
  rig.sched.spawn_failed(0, "fork failed: EAGAIN");
  CHECK(rig.sched.next_timer() == std::optional<std::chrono::nanoseconds>(Scheduler::kRespawnDelayNs));
  rig.clock.advance(Scheduler::kRespawnDelayNs - 1);
  rig.sched.tick();
  CHECK(rig.transport.replaced == std::vector<std::size_t>{0, 1, 0});
  rig.clock.advance(1);
  rig.sched.tick();
  CHECK(rig.transport.replaced == std::vector<std::size_t>{0, 1, 0, 0});
}

TEST_CASE("without a task timeout or a vacant slot there is no timer") {
  Rig rig(with_workers(2));
  rig.start();
  CHECK(rig.sched.next_timer() == kNoTimer);
  const auto b = rig.add_ints(8);
  rig.sched.dispatch();
  rig.transport.running_at[0] = RunningItem{rig.transport.sent.at(0).id, 0, 1};
  CHECK(rig.sched.next_timer() == kNoTimer);
  rig.sched.tick();
  CHECK(rig.transport.killed.empty());
}

// ---- recycling -----------------------------------------------------------------------------

TEST_CASE("a worker is retired after max_tasks_per_worker items and replaced once it is gone") {
  Settings s = with_workers(1);
  s.max_tasks_per_worker = 3;
  Rig rig(std::move(s));
  rig.start();
  const auto b = rig.add_ints(10);
  rig.sched.dispatch();
  std::size_t retirements_seen = 0;
  for (int round = 0; round < 50 && !b->finished(); ++round) {
    if (!rig.transport.inbox[0].empty()) {
      rig.answer(0, 1000 * rig.transport.inbox[0].front().items.size());
    } else if (rig.transport.retired.size() > retirements_seen) {
      ++retirements_seen;
      rig.die(0, 0, RunningItem{});  // it exited as asked
      rig.boot(0);
    }
    rig.sched.dispatch();
  }
  REQUIRE(b->finished());
  CHECK(b->each_item_has_one_outcome());

  std::map<int, std::size_t> items_per_life;
  for (const Sent& sent : rig.transport.sent) items_per_life[sent.life] += sent.items.size();
  CHECK(items_per_life == std::map<int, std::size_t>{{1, 3}, {2, 3}, {3, 3}, {4, 1}});
  CHECK(rig.transport.retired == std::vector<std::size_t>{0, 0, 0});
  CHECK(rig.transport.replaced == std::vector<std::size_t>{0, 0, 0, 0});
  CHECK(rig.transport.killed.empty());
}

// A re-queued chunk counts against max_tasks_per_worker like a new one: worker 0, with 3 of its 4
// items run, does not take the 3 items of a chunk whose worker died outside any item.
TEST_CASE("a worker runs no more than max_tasks_per_worker items, re-run chunks included") {
  Settings s = with_workers(2);
  s.max_tasks_per_worker = 4;
  Rig rig(std::move(s));
  rig.start();
  const auto b = rig.add_ints(12, 3);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sizes() == std::vector<std::size_t>{3, 3});
  rig.die(1, -9, RunningItem{});  // outside any item: its 3 items run again
  rig.answer(0, 3 * 5 * kMs);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 3);

  std::map<std::pair<std::size_t, int>, std::size_t> items_per_life;
  for (const Sent& sent : rig.transport.sent)
    items_per_life[{sent.worker, sent.life}] += sent.items.size() - sent.skip.size();
  for (const auto& [life, items] : items_per_life) {
    INFO("worker " << life.first << ", process " << life.second);
    CHECK(items <= 4);
  }
}

// ---- the caller's side ---------------------------------------------------------------------

TEST_CASE("a forgotten call reads no more of its input, and its chunks out still finish") {
  Rig rig(with_workers(2));
  rig.start();
  const auto b = rig.add_ints(100, 4);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 2);
  const int calls = b->encode_calls;
  CHECK(calls == 2);

  rig.sched.forget(*b);
  CHECK(b->forgotten());
  rig.sched.dispatch();
  CHECK(rig.transport.sent.size() == 2);
  rig.answer(0, 4000);
  rig.answer(1, 4000);
  rig.sched.dispatch();
  CHECK(rig.transport.sent.size() == 2);
  CHECK(b->encode_calls == calls);
  CHECK(b->finished());
  CHECK(b->total() == 8);
  CHECK(b->completed() == 8);
  CHECK(b->progress_calls == 0);  // nobody waits for it: its callback is not run
  CHECK(rig.sched.idle());

  // The pool goes on with the next call.
  const auto next = rig.add_ints(3, 0, 7);
  rig.run_to_end();
  CHECK(next->finished());
  CHECK(next->has_value(2));
  CHECK(rig.transport.held.empty());
}

TEST_CASE("an input that throws fails only its own call; the other call goes on") {
  Rig rig(with_workers(1));
  rig.start();
  const auto bad = rig.add_ints(8, 4);
  bad->throw_at = 5;
  const auto good = rig.add_ints(4, 0, 500);  // the same job: it may share chunks with `bad`
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 1);
  CHECK(rig.transport.sent[0].items == std::vector<int>{100, 101, 102, 103});
  rig.answer(0, 4000);
  rig.sched.dispatch();

  // Item 4 was encoded before the throw, but goes out with nothing of its call: the next chunk
  // is the other call's.
  REQUIRE(rig.transport.sent.size() >= 2);
  CHECK(rig.transport.sent[1].items == std::vector<int>{500, 501});
  REQUIRE(bad->caller_error());
  CHECK(failure_of(bad->caller_error()).what == "input 5 is unreadable");
  CHECK(bad->settled());
  CHECK(bad->completed() == 4);
  CHECK(bad->total() == 4);
  const int calls = bad->encode_calls;

  rig.run_to_end();
  CHECK(bad->encode_calls == calls);
  REQUIRE(good->finished());
  for (const std::size_t i : indices(0, 4)) CHECK(good->has_value(i));
  CHECK_FALSE(good->caller_error());
  CHECK(rig.transport.held.empty());
}

TEST_CASE("terminate kills every worker and fails what has not finished") {
  Rig rig(with_workers(2));
  rig.start();
  const auto b = rig.add_ints(20, 4);
  rig.sched.dispatch();
  rig.sched.terminate("the pool was terminated");
  CHECK(rig.transport.killed == std::vector<std::size_t>{0, 1});
  REQUIRE(b->finished());
  CHECK(failure_of(b->errors[0]).what == "procpool::Pool: item 0 did not complete: the pool was terminated");
  CHECK(failure_of(b->errors[19]).what == "procpool::Pool: item 19 did not run: the pool was terminated");
  rig.die(0, -9, RunningItem{});
  rig.die(1, -9, RunningItem{});
  CHECK(rig.transport.replaced == std::vector<std::size_t>{0, 1});  // not replaced
  CHECK(b->each_item_has_one_outcome());
  CHECK(rig.transport.held.empty());
}

// ---- start-up failures ---------------------------------------------------------------------

TEST_CASE("an initializer that throws breaks the pool, and pending work fails with its message") {
  Rig rig(with_workers(2));
  rig.start(/*ready=*/false);
  const auto b = rig.add_ints(8);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sizes() == std::vector<std::size_t>{2, 1});
  const std::string reason = "procpool::Pool: the initializer threw std::runtime_error: no config in worker 0";

  rig.sched.init_failed(0, reason);
  CHECK_FALSE(rig.sched.lifecycle().broken());  // not before the worker is gone
  rig.die(0, 3, RunningItem{});
  REQUIRE(rig.sched.lifecycle().broken());
  CHECK(rig.sched.lifecycle().broken_reason() == reason);
  CHECK_FALSE(rig.sched.lifecycle().dispatches());
  CHECK_THROWS_WITH(rig.sched.lifecycle().throw_if_unusable(), reason);
  CHECK(rig.transport.replaced == std::vector<std::size_t>{0, 1});

  REQUIRE(b->finished());
  CHECK(b->each_item_has_one_outcome());
  for (const std::size_t i : indices(0, 3))
    CHECK(failure_of(b->errors[i]).what == fmt::format("procpool::Pool: item {} did not complete: {}", i, reason));
  for (const std::size_t i : indices(3, 8))
    CHECK(failure_of(b->errors[i]).what == fmt::format("procpool::Pool: item {} did not run: {}", i, reason));
  CHECK(rig.transport.held.empty());

  // Worker 1's late answer is for a chunk no longer in flight.
  CHECK_THROWS_AS(rig.answer(1, 2000), procpool::DecodeError);
  CHECK(b->each_item_has_one_outcome());
}

TEST_CASE("a worker that dies three times before its initializer returns breaks the pool") {
  Rig rig(with_workers(1));
  rig.start(/*ready=*/false);
  rig.die(0, -11, RunningItem{});
  rig.boot(0, /*ready=*/false);
  rig.die(0, -11, RunningItem{});
  CHECK_FALSE(rig.sched.lifecycle().broken());
  rig.boot(0, /*ready=*/false);
  rig.die(0, -11, RunningItem{});
  REQUIRE(rig.sched.lifecycle().broken());
  CHECK(rig.sched.lifecycle().broken_reason() ==
        "procpool::Pool: worker 0 (fake) was killed by signal 11 (SIGSEGV) while running the initializer, three times "
        "in a row");
  CHECK(rig.transport.replaced == std::vector<std::size_t>{0, 0, 0});
}

TEST_CASE("a death after the initializer returned resets the count of deaths in it") {
  Rig rig(with_workers(1));
  rig.start(/*ready=*/false);
  rig.die(0, -11, RunningItem{});
  rig.boot(0, /*ready=*/false);
  rig.die(0, -11, RunningItem{});
  rig.boot(0, /*ready=*/true);
  rig.die(0, -11, RunningItem{});
  rig.boot(0, /*ready=*/false);
  rig.die(0, -11, RunningItem{});
  CHECK_FALSE(rig.sched.lifecycle().broken());
}

TEST_CASE("when no worker can be started, pending work fails saying so") {
  Rig rig(with_workers(2));
  rig.start();
  const auto b = rig.add_ints(12, 4);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 2);

  rig.die(0, -9, RunningItem{});
  rig.sched.spawn_failed(0, "fork failed: EAGAIN");
  CHECK(b->completed() == 0);  // worker 1 still runs
  rig.die(1, -9, RunningItem{});
  CHECK(b->completed() == 0);  // slot 1 is being filled
  rig.sched.spawn_failed(1, "fork failed: EAGAIN");

  REQUIRE(b->finished());
  CHECK(b->each_item_has_one_outcome());
  const std::string why = "no worker could be started (fork failed: EAGAIN)";
  CHECK(rig.sched.spawn_error() == "fork failed: EAGAIN");
  for (const std::size_t i : indices(0, 8))
    CHECK(failure_of(b->errors[i]).what == fmt::format("procpool::Pool: item {} did not complete: {}", i, why));
  for (const std::size_t i : indices(8, 12))
    CHECK(failure_of(b->errors[i]).what == fmt::format("procpool::Pool: item {} did not run: {}", i, why));
  CHECK_FALSE(rig.sched.lifecycle().broken());  // workers are asked for again later
  CHECK(rig.transport.held.empty());

  rig.clock.advance(Scheduler::kRespawnDelayNs);
  rig.sched.tick();
  CHECK(rig.transport.replaced == std::vector<std::size_t>{0, 1, 0, 1, 0, 1});
  rig.boot(0);
  rig.boot(1);
  const auto next = rig.add_ints(4);
  rig.run_to_end();
  CHECK(next->finished());
  CHECK(next->has_value(3));
}

TEST_CASE("a worker that cannot be started at start-up leaves spawn_error for the constructor") {
  Rig rig(with_workers(2));
  for (std::size_t w = 0; w < 2; ++w) rig.sched.request_worker(w);
  rig.boot(0);
  rig.sched.spawn_failed(1, "fork failed: ENOMEM");
  CHECK(rig.sched.spawn_error() == "fork failed: ENOMEM");
  CHECK_FALSE(rig.sched.starting(1));
  CHECK_FALSE(rig.sched.running(1));
  CHECK(rig.sched.running(0));
  CHECK_FALSE(rig.sched.lifecycle().broken());
}

// ---- stopping a call: cancel and deadlines --------------------------------------------------

/// Three single-item calls of one job, dispatched to a rig's only worker as one chunk [a0, b0, c0]
/// (a's chunk_size of 3 lets the others join its chunk); the tests stop b.
struct ThreeCallsInOneChunk {
  explicit ThreeCallsInOneChunk(Rig& rig)
      : a(rig.add_ints(1, 3, 100)), b(rig.add_ints(1, 0, 200)), c(rig.add_ints(1, 0, 300)) {
    rig.sched.dispatch();
    REQUIRE(rig.transport.sizes() == std::vector<std::size_t>{3});
    chunk = rig.transport.sent[0];
  }
  /// a and c have their values, b failed with CancelledError, and each item has one outcome.
  void check_only_b_cancelled() const {
    CHECK(a->has_value(0));
    CHECK(c->has_value(0));
    CHECK(failure_of(b->errors[0]).kind == "CancelledError");
    CHECK(a->each_item_has_one_outcome());
    CHECK(b->each_item_has_one_outcome());
    CHECK(c->each_item_has_one_outcome());
  }
  std::shared_ptr<IntBatch> a, b, c;
  Sent chunk;
};

TEST_CASE("a call stopped before any of it went out fails every item and never sends one") {
  Rig rig(with_workers(1));
  rig.start();
  const auto a = rig.add_ints(1, 0, 100, 1);
  const auto b = rig.add_ints(3, 0, 200, 2);  // another job: it waits for the worker
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 1);
  CHECK(rig.sched.abort(*b, Abort::cancelled));
  CHECK(b->finished());
  CHECK(b->each_item_has_one_outcome());
  for (const std::size_t i : indices(0, 3)) CHECK(failure_of(b->errors[i]).kind == "CancelledError");
  CHECK(failure_of(b->errors[0]).what == "procpool::Pool: item 0 was cancelled");
  CHECK_FALSE(rig.sched.abort(*b, Abort::cancelled));  // settled already
  rig.run_to_end();
  CHECK(rig.transport.sent.size() == 1);
  CHECK(a->has_value(0));
  CHECK(b->encode_calls == 0);  // its input was never read
}

TEST_CASE("a call stopped while its item runs gets that worker killed, nobody blamed, and the others run again") {
  Rig rig(with_workers(1));
  rig.start();
  const ThreeCallsInOneChunk calls(rig);
  rig.transport.running_at[0] = RunningItem{calls.chunk.id, 1, rig.clock.now};
  CHECK(rig.sched.abort(*calls.b, Abort::cancelled));
  CHECK(rig.transport.killed == std::vector<std::size_t>{0});
  CHECK(rig.transport.withdrawals.empty());
  // The kill lands after the worker moved on to c0: c0 is not to blame either.
  rig.die(0, -9, RunningItem{calls.chunk.id, 2, rig.clock.now});
  CHECK(calls.a->errors[0] == nullptr);
  CHECK(calls.c->errors[0] == nullptr);
  rig.boot(0);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 2);
  CHECK(rig.transport.sent[1].skip == std::vector<std::uint32_t>{1});
  rig.answer(0, 3000);
  calls.check_only_b_cancelled();
  CHECK(rig.transport.protocol_errors.empty());
}

TEST_CASE("a stopped call's items waiting in a worker's chunk are withdrawn, and the worker answers what it ran") {
  Rig rig(with_workers(1));
  rig.start();
  const ThreeCallsInOneChunk calls(rig);
  rig.transport.running_at[0] = RunningItem{calls.chunk.id, 0, rig.clock.now};  // runs a0
  CHECK(rig.sched.abort(*calls.b, Abort::cancelled));
  CHECK(rig.transport.killed.empty());
  REQUIRE(rig.transport.withdrawals.size() == 1);
  CHECK(rig.transport.withdrawals[0] == FakeTransport::Withdrawal{0, calls.chunk.id, 1});
  // The worker stops before item 1 and answers item 0; c0 runs again, b0 never.
  rig.answer_part(0, 1);
  CHECK(calls.a->has_value(0));
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 2);
  CHECK(rig.transport.sent[1].skip == std::vector<std::uint32_t>{0, 1});
  rig.answer(0, 1000);
  calls.check_only_b_cancelled();
  CHECK(calls.b->discarded == 0);
  CHECK(rig.transport.held.empty());
}

TEST_CASE("a worker that starts a stopped item just as the withdrawal is posted is killed") {
  Rig rig(with_workers(1));
  rig.start();
  const ThreeCallsInOneChunk calls(rig);
  rig.transport.running_at[0] = RunningItem{calls.chunk.id, 0, rig.clock.now};
  rig.transport.started_during_withdrawal = RunningItem{calls.chunk.id, 1, rig.clock.now};
  CHECK(rig.sched.abort(*calls.b, Abort::cancelled));
  CHECK(rig.transport.killed == std::vector<std::size_t>{0});
  rig.die(0, -9, RunningItem{calls.chunk.id, 1, rig.clock.now});
  rig.boot(0);
  rig.run_to_end();
  calls.check_only_b_cancelled();
}

TEST_CASE("a value that arrives for an item of a stopped call is read past and dropped") {
  Rig rig(with_workers(1));
  rig.start();
  const ThreeCallsInOneChunk calls(rig);
  // The worker already ran b0 and is on c0: the withdrawal is too late for b0, nothing to kill.
  rig.transport.running_at[0] = RunningItem{calls.chunk.id, 2, rig.clock.now};
  CHECK(rig.sched.abort(*calls.b, Abort::cancelled));
  CHECK(rig.transport.killed.empty());
  CHECK(rig.transport.withdrawals.empty());
  rig.answer(0, 3000);
  CHECK(calls.b->discarded == 1);
  calls.check_only_b_cancelled();
}

TEST_CASE("a call's deadline fails what has not finished with TimeoutError, and next_timer names it") {
  Rig rig(with_workers(1));
  rig.start();
  auto batch = std::make_shared<IntBatch>(6, 100, 2);
  batch->limit(std::chrono::nanoseconds{0}, std::chrono::milliseconds(50));
  const auto b = rig.add(batch);
  rig.sched.dispatch();
  CHECK(rig.sched.next_timer() == std::optional<std::chrono::nanoseconds>(std::chrono::milliseconds(50)));
  rig.answer(0, 2000);
  rig.sched.dispatch();
  const Sent second = rig.transport.inbox[0].front();
  rig.transport.running_at[0] = RunningItem{second.id, 0, rig.clock.now};
  rig.clock.advance(50 * kMs);
  rig.sched.tick();
  CHECK(b->finished());
  CHECK(b->has_value(0));
  CHECK(b->has_value(1));
  for (const std::size_t i : indices(2, 6)) CHECK(failure_of(b->errors[i]).kind == "TimeoutError");
  CHECK(failure_of(b->errors[5]).what ==
        "procpool::Pool: item 5 had not finished when its call's timeout of 50 ms passed; the call's unfinished items "
        "failed, and workers running them were killed and replaced (raise the timeout, or split the work)");
  CHECK(rig.transport.killed == std::vector<std::size_t>{0});
  CHECK(b->each_item_has_one_outcome());
  CHECK(rig.sched.next_timer() == std::nullopt);
}

TEST_CASE("a call's task_timeout applies to its own items only, over a pool without one") {
  Rig rig(with_workers(2));
  rig.start();
  auto timed = std::make_shared<IntBatch>(1, 100, 1);
  timed->limit(std::chrono::milliseconds(20), std::chrono::nanoseconds{0});
  const auto t = rig.add(timed, 1);
  const auto u = rig.add_ints(1, 0, 200, 2);
  rig.sched.dispatch();
  REQUIRE(rig.transport.sent.size() == 2);
  for (const Sent& s : rig.transport.sent) rig.transport.running_at[s.worker] = RunningItem{s.id, 0, rig.clock.now};
  rig.clock.advance(30 * kMs);
  rig.sched.tick();
  const std::size_t timed_worker = rig.transport.sent[0].worker;
  CHECK(rig.transport.killed == std::vector<std::size_t>{timed_worker});
  rig.die(timed_worker, -9, rig.transport.running_at[timed_worker]);
  CHECK(failure_of(t->errors[0]).what ==
        fmt::format("procpool::Pool: item 0 ran longer than the task timeout of 20 ms; worker {} (fake) was killed and "
                    "replaced",
                    timed_worker));
  rig.answer(1 - timed_worker, 1000);
  CHECK(u->has_value(0));
}
