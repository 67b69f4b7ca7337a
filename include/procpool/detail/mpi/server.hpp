// procpool::detail::mpi: a serving rank's loop. It holds jobs and chunks from rank 0, runs each
// chunk as a call on the rank's local pool (its own worker processes, forked by a zygote that was
// started before MPI), and answers each chunk with its results, until rank 0 says stop.
#pragma once

#include <sched.h>
#include <time.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../pool_core.hpp"
#include "comm.hpp"
#include "modules.hpp"
#include "raw_batch.hpp"
#include "travel.hpp"

namespace procpool::detail::mpi {

/// Waits without a busy core: yields for a short while after the last news (a reply is often
/// microseconds away), then sleeps in growing steps up to kMaxSleep.
class Backoff {
 public:
  static constexpr std::int64_t kSpinNs = 1'000'000;
  static constexpr std::int64_t kMaxSleepNs = 200'000;

  void news() noexcept {
    last_news_ = monotonic_ns();
    sleep_ns_ = 1'000;
  }
  void idle() noexcept {
    if (monotonic_ns() - last_news_ < kSpinNs) {
      ::sched_yield();
      return;
    }
    const timespec ts{0, static_cast<long>(sleep_ns_)};
    ::nanosleep(&ts, nullptr);
    sleep_ns_ = std::min<std::int64_t>(kMaxSleepNs, sleep_ns_ * 2);
  }

 private:
  std::int64_t last_news_ = monotonic_ns();
  std::int64_t sleep_ns_ = 1'000;
};

/// A job as a serving rank holds it.
struct ServedJob {
  std::uintptr_t runner_factory = 0;  // this rank's address
  ShapeFn shape = nullptr;
  Buffer callable;
};

class Server {
 public:
  /// `where`: how messages name this rank ("rank 2 (host node7)").
  /// `inbox`: the one this rank received its verdict through (it may hold messages already).
  Server(Outbox outbox, Inbox inbox, std::shared_ptr<PoolCore> pool, std::string where)
      : outbox_(std::move(outbox)), inbox_(std::move(inbox)), pool_(std::move(pool)), where_(std::move(where)) {}

  /// Serves until rank 0 says stop.
  void serve() {
    Backoff backoff;
    for (;;) {
      bool news = false;
      while (std::optional<Message> m = inbox_.poll(0)) {
        news = true;
        if (m->kind == Kind::stop) {
          stop();
          return;
        }
        handle(*m);
      }
      if (!active_.empty()) {
        if (news) {
          // New chunks go to the local workers at once.
          pool_->make_progress();
        } else {
          // Wait on the local workers (spinning when results are due, else in poll), a millisecond
          // at most, so that chunks arriving meanwhile are taken in soon.
          const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds{1000};
          pool_->wait_until(
              [&] {
                for (const Active& a : active_)
                  if (a.batch->settled()) return true;
                return std::chrono::steady_clock::now() >= deadline;
              },
              deadline);
        }
        news = reply() || news;
      }
      news = outbox_.progress() || news;
      if (news) {
        backoff.news();
      } else if (active_.empty()) {
        backoff.idle();
      }
    }
  }

 private:
  struct Active {
    std::uint64_t chunk = 0;
    std::uint32_t slot = 0;
    std::uint64_t local_job = 0;  // the job's id in the local pool
    std::shared_ptr<RawBatch> batch;
  };

  void handle(Message& m) {
    Reader r(m.body.view());
    if (m.kind == Kind::job) {
      const auto id = r.get<std::uint64_t>();
      ServedJob job;
      RelativeAddress factory;
      factory.module = r.str();
      factory.offset = r.get<std::uint64_t>();
      RelativeAddress shape;
      shape.module = r.str();
      shape.offset = r.get<std::uint64_t>();
      AddressMap& map = AddressMap::instance();
      job.runner_factory = map.absolute(factory);
      job.shape = reinterpret_cast<ShapeFn>(map.absolute(shape));
      const auto callable = r.bytes();
      job.callable.append(callable.data(), callable.size());
      jobs_[id] = std::move(job);
      return;
    }
    if (m.kind != Kind::chunk)
      throw Error(
          fmt::format("procpool::mpi: {} got a message of unexpected kind {}", where_, static_cast<int>(m.kind)));
    Active a;
    a.chunk = r.get<std::uint64_t>();
    const auto job_id = r.get<std::uint64_t>();
    a.slot = r.get<std::uint32_t>();
    const auto count = r.get<std::uint32_t>();
    const auto skip_count = r.get<std::uint32_t>();
    const auto span_count = r.get<std::uint32_t>();
    std::vector<std::uint32_t> skip(skip_count);
    for (auto& s : skip) s = r.get<std::uint32_t>();
    std::vector<Span> spans(span_count);
    for (Span& s : spans) {
      s.first = r.get<std::uint64_t>();
      s.count = r.get<std::uint32_t>();
      s.label = r.str();
    }
    const auto items = r.bytes();
    const auto job = jobs_.find(job_id);
    if (job == jobs_.end()) throw Error(fmt::format("procpool::mpi: {} got a chunk of an unknown job", where_));
    // The batch keeps the message: its items are read from where they arrived.
    const auto items_at = static_cast<std::size_t>(items.data() - m.body.data());
    a.batch = std::make_shared<RawBatch>(std::move(m.body), items_at, items.size(), count, std::move(skip),
                                         std::move(spans), job->second.shape, where_);
    a.local_job = pool_->register_job(job->second.runner_factory, job->second.callable.view());
    pool_->add_batch(a.batch, a.local_job);
    PROCPOOL_MPI_TRACE("{}: chunk {} of {} items added {}\n", where_, a.chunk, count, monotonic_ns() / 1000);
    active_.push_back(std::move(a));
  }

  /// Sends the results of every settled chunk; true if there was one.
  bool reply() {
    bool any = false;
    for (auto it = active_.begin(); it != active_.end();) {
      if (!it->batch->settled()) {
        ++it;
        continue;
      }
      if (it->batch->caller_error()) std::rethrow_exception(it->batch->caller_error());
      RawBatch::Results results = it->batch->take_results(pool_->size(), pool_->job_ns_per_item(it->local_job));
      Buffer front;
      Writer(front).put<std::uint64_t>(it->chunk).put<std::uint32_t>(it->slot);
      front.append(results.head.data(), results.head.size());
      pool_->forget(*it->batch);
      PROCPOOL_MPI_TRACE("{}: chunk {} answered {}\n", where_, it->chunk, monotonic_ns() / 1000);
      outbox_.send(0, Kind::results, std::move(front), std::move(results.values));
      it = active_.erase(it);
      any = true;
    }
    return any;
  }

  /// Rank 0 is done: whatever still runs here is not wanted; the local pool stops, and rank 0 is
  /// told when nothing more will come from here.
  void stop() {
    for (const Active& a : active_) pool_->forget(*a.batch);
    active_.clear();
    pool_->shutdown(/*graceful=*/false);
    outbox_.send(0, Kind::stop, Buffer{});
    outbox_.drain();
  }

  Outbox outbox_;
  Inbox inbox_;
  std::shared_ptr<PoolCore> pool_;
  std::string where_;
  std::unordered_map<std::uint64_t, ServedJob> jobs_;
  std::vector<Active> active_;
};

}  // namespace procpool::detail::mpi
