// What MPI and this machine allow without procpool, run by benchmarks/compare_mpi under
// `mpirun -n 3` beside procpool_mpi_bench: the least any design of procpool::mpi could pay on the
// paths of its round trip and payload workloads. One JSON object per line on stdout, as mpi_bench
// (impl "floor"). Workloads:
//   mpi_roundtrip        8 bytes from rank 0 to rank 1 and back, raw MPI (microseconds each)
//   forked_roundtrip     the same, rank 1 handing the bytes to a child process over a socket and
//                        sending back its answer: the shortest path on which a task runs isolated
//                        from the rank that received it (microseconds each)
//   mpi_payload          64 messages of 1 MiB from rank 0, half to rank 1 and half to rank 2, each
//                        sent back as it arrives (seconds per round, as mpi_bench's payload)
// Serving ranks wait for messages as procpool's do, yielding for a while, then sleeping, not
// spinning in a blocking receive (which would take a core from the others on a small machine).
// --smoke: tiny sizes.
#include <mpi.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr int kRoundTripTag = 1;
constexpr int kForkedTag = 2;
constexpr int kPayloadTag = 3;
constexpr int kStopTag = 4;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void emit(const char* workload, std::size_t param, const std::vector<double>& samples, const char* unit) {
  std::string list;
  for (const double s : samples) {
    char text[32];
    std::snprintf(text, sizeof text, "%.9g", s);
    list += (list.empty() ? "" : ", ") + std::string(text);
  }
  std::printf("{\"impl\": \"floor\", \"workload\": \"%s\", \"param\": %zu, \"samples\": [%s], \"unit\": \"%s\"}\n",
              workload, param, list.c_str(), unit);
  std::fflush(stdout);
}

bool transfer(int fd, char* data, std::size_t n, bool writing) {
  std::size_t done = 0;
  while (done < n) {
    const ssize_t r = writing ? ::write(fd, data + done, n - done) : ::read(fd, data + done, n - done);
    if (r > 0) {
      done += static_cast<std::size_t>(r);
    } else if (r < 0 && errno == EINTR) {
      continue;
    } else {
      return false;
    }
  }
  return true;
}

/// Waits for `request` as procpool's serving ranks do (detail::mpi::Backoff): yielding for a
/// millisecond after the last message, then sleeping in steps growing to 200 us.
void wait_like_a_serving_rank(MPI_Request& request, MPI_Status& status,
                              std::chrono::steady_clock::time_point last_message) {
  auto sleep = std::chrono::microseconds(1);
  for (;;) {
    int done = 0;
    MPI_Test(&request, &done, &status);
    if (done != 0) return;
    if (std::chrono::steady_clock::now() - last_message < std::chrono::milliseconds(1)) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(sleep);
      sleep = std::min(sleep * 2, std::chrono::microseconds(200));
    }
  }
}

void drive(bool smoke) {
  const int trips = smoke ? 50 : 3000;
  char small[8] = {};
  for (const auto& [tag, workload] :
       {std::pair{kRoundTripTag, "mpi_roundtrip"}, std::pair{kForkedTag, "forked_roundtrip"}}) {
    std::vector<double> samples;
    for (int i = 0; i < trips; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      MPI_Send(small, sizeof small, MPI_BYTE, 1, tag, MPI_COMM_WORLD);
      MPI_Recv(small, sizeof small, MPI_BYTE, 1, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      samples.push_back(seconds_since(t0) * 1e6);
    }
    emit(workload, 1, samples, "us");
  }
  const int count = smoke ? 4 : 64;
  constexpr std::size_t kMiB = std::size_t{1} << 20;
  std::vector<char> out(static_cast<std::size_t>(count) * kMiB, 'x');
  std::vector<char> back(out.size());
  std::vector<double> samples;
  for (int rep = 0; rep < (smoke ? 2 : 6); ++rep) {
    std::vector<MPI_Request> requests;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < count; ++i) {
      const int dest = 1 + i % 2;
      char* at = out.data() + static_cast<std::size_t>(i) * kMiB;
      requests.emplace_back();
      MPI_Isend(at, static_cast<int>(kMiB), MPI_BYTE, dest, kPayloadTag, MPI_COMM_WORLD, &requests.back());
      requests.emplace_back();
      MPI_Irecv(back.data() + static_cast<std::size_t>(i) * kMiB, static_cast<int>(kMiB), MPI_BYTE, dest, kPayloadTag,
                MPI_COMM_WORLD, &requests.back());
    }
    MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE);
    if (rep > 0) samples.push_back(seconds_since(t0));  // the first round faults the pages in
  }
  emit("mpi_payload", static_cast<std::size_t>(count), samples, "s");
  for (int r = 1; r <= 2; ++r) MPI_Send(nullptr, 0, MPI_BYTE, r, kStopTag, MPI_COMM_WORLD);
}

void serve(int child_fd) {
  std::vector<char> buffer(std::size_t{1} << 20);
  auto last_message = std::chrono::steady_clock::now();
  for (;;) {
    MPI_Status status;
    MPI_Request request;
    MPI_Irecv(buffer.data(), static_cast<int>(buffer.size()), MPI_BYTE, 0, MPI_ANY_TAG, MPI_COMM_WORLD, &request);
    wait_like_a_serving_rank(request, status, last_message);
    last_message = std::chrono::steady_clock::now();
    if (status.MPI_TAG == kStopTag) return;
    int n = 0;
    MPI_Get_count(&status, MPI_BYTE, &n);
    if (status.MPI_TAG == kForkedTag) {
      if (!transfer(child_fd, buffer.data(), static_cast<std::size_t>(n), true) ||
          !transfer(child_fd, buffer.data(), static_cast<std::size_t>(n), false)) {
        std::fprintf(stderr, "mpi_floor: the child process is gone\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
    }
    MPI_Send(buffer.data(), n, MPI_BYTE, 0, status.MPI_TAG, MPI_COMM_WORLD);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool smoke = argc > 1 && std::strcmp(argv[1], "--smoke") == 0;
  // The child is forked before MPI starts (as procpool's zygotes are): it answers 8 bytes with
  // the same 8 bytes, as a worker answers a task, until its socket closes.
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    std::perror("mpi_floor: socketpair");
    return 1;
  }
  const pid_t child = ::fork();
  if (child < 0) {
    std::perror("mpi_floor: fork");
    return 1;
  }
  if (child == 0) {
    ::close(sv[0]);
    char bytes[8];
    while (transfer(sv[1], bytes, sizeof bytes, false) && transfer(sv[1], bytes, sizeof bytes, true)) {
    }
    ::_exit(0);
  }
  ::close(sv[1]);
  MPI_Init(&argc, &argv);
  int rank = 0;
  int size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int rc = 0;
  if (size != 3) {
    if (rank == 0) std::fprintf(stderr, "mpi_floor: run it under mpirun -n 3 (it has %d ranks)\n", size);
    rc = 2;
  } else if (rank == 0) {
    drive(smoke);
  } else {
    serve(sv[0]);
  }
  MPI_Finalize();
  ::close(sv[0]);
  ::waitpid(child, nullptr, 0);
  return rc;
}
