// procpool::progress_bar: the tqdm-like bar for MapOptions::on_progress. Its state machine and
// lines are driven by a fake clock into a string sink (terminal and plain modes, throttling,
// widths, unknown totals, reuse); then progress_bar() itself reports a real map into a file and
// into a pseudo-terminal standing in for stderr.
#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <functional>
#include <limits>
#include <numeric>
#include <procpool/pool.hpp>
#include <procpool/progress.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using procpool::detail::display_width;
using procpool::detail::format_duration;
using procpool::detail::format_rate;
using procpool::detail::locale_is_utf8;
using procpool::detail::ProgressBar;
using procpool::detail::ProgressBarIo;
using procpool_test::contains;
using procpool_test::count_occurrences;

namespace {

/// A fake clock, a string sink and a terminal width for a ProgressBar.
struct Fake {
  std::chrono::steady_clock::time_point now{std::chrono::hours{1}};
  std::vector<std::string> writes;
  std::size_t columns = 80;

  ProgressBarIo io(bool terminal, bool unicode = true) {
    ProgressBarIo io;
    io.write = [this](std::string_view text) { writes.emplace_back(text); };
    io.now = [this] { return now; };
    io.columns = [this] { return columns; };
    io.terminal = terminal;
    io.unicode = unicode;
    return io;
  }
  [[nodiscard]] std::string all() const { return std::accumulate(writes.begin(), writes.end(), std::string{}); }
};

/// The text a terminal shows for one redraw: between its '\r' and the ESC [ K that ends it.
std::string visible(std::string_view redraw) {
  if (!redraw.empty() && redraw.front() == '\r') redraw.remove_prefix(1);
  if (const auto at = redraw.find("\x1b[K"); at != std::string_view::npos) redraw = redraw.substr(0, at);
  if (!redraw.empty() && redraw.back() == '\n') redraw.remove_suffix(1);
  return std::string{redraw};
}

/// The lines of plain output, without their newlines.
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t from = 0;
  for (auto at = text.find('\n'); at != std::string::npos; at = text.find('\n', from)) {
    lines.push_back(text.substr(from, at - from));
    from = at + 1;
  }
  if (from < text.size()) lines.push_back(text.substr(from));
  return lines;
}

/// Reports done = 1..total, one every `step` of fake time.
void run(Fake& fake, ProgressBar& bar, std::size_t total, std::chrono::milliseconds step, std::size_t reported_total) {
  for (std::size_t done = 1; done <= total; ++done) {
    fake.now += step;
    bar.update(done, reported_total);
  }
}

long slow_square(int x) {
  std::this_thread::sleep_for(2ms);
  return static_cast<long>(x) * x;
}

}  // namespace

TEST_CASE("durations show as MM:SS, as H:MM:SS from an hour on, and as ? when unknown") {
  CHECK(format_duration(0) == "00:00");
  CHECK(format_duration(3.9) == "00:03");
  CHECK(format_duration(754) == "12:34");
  CHECK(format_duration(3599.5) == "59:59");
  CHECK(format_duration(3600) == "1:00:00");
  CHECK(format_duration(100 * 3600 + 62) == "100:01:02");
  CHECK(format_duration(-1) == "00:00");
  CHECK(format_duration(std::numeric_limits<double>::quiet_NaN()) == "?");
  CHECK(format_duration(std::numeric_limits<double>::infinity()) == "?");
}

TEST_CASE("rates show as it/s, as s/it below one item a second, and as ? it/s when unknown") {
  CHECK(format_rate(131.24) == "131.2 it/s");
  CHECK(format_rate(1) == "1.0 it/s");
  CHECK(format_rate(0.4) == "2.5 s/it");
  CHECK(format_rate(0) == "? it/s");
  CHECK(format_rate(std::numeric_limits<double>::infinity()) == "? it/s");
}

TEST_CASE("the locale is UTF-8 when LC_ALL, else LC_CTYPE, else LANG names UTF-8") {
  CHECK(locale_is_utf8(nullptr, nullptr, "en_US.UTF-8"));
  CHECK(locale_is_utf8(nullptr, nullptr, "C.utf8"));
  CHECK(locale_is_utf8("", nullptr, "de_DE.utf-8"));
  CHECK_FALSE(locale_is_utf8("C", nullptr, "en_US.UTF-8"));
  CHECK(locale_is_utf8(nullptr, "en_GB.UTF8", "C"));
  CHECK_FALSE(locale_is_utf8(nullptr, nullptr, "POSIX"));
  CHECK_FALSE(locale_is_utf8(nullptr, nullptr, nullptr));
  CHECK_FALSE(locale_is_utf8(nullptr, nullptr, "en_US.ISO-8859-1"));
}

TEST_CASE("on a terminal the first report draws the line at once, tqdm-style, with a carriage return and clear-to-end-of-line") {
  Fake fake;
  ProgressBar bar{"squares", fake.io(true)};
  fake.now += 1s;
  bar.update(15, 100);
  REQUIRE(fake.writes.size() == 1);
  // 80 columns: the line takes 79; "squares:  15%|" + 31 cells + "|  15/100 [00:01<00:05, 15.0 it/s]"
  // (the count padded to the total's width). 15% of 31 cells is 37.2 eighths: 4 full blocks and a
  // five-eighths block.
  const std::string expected =
      "\rsquares:  15%|████▋" + std::string(26, ' ') + "|  15/100 [00:01<00:05, 15.0 it/s]\x1b[K";
  CHECK(fake.writes[0] == expected);
  CHECK(display_width(visible(fake.writes[0])) == 79);
}

TEST_CASE("on a terminal the line is redrawn at most ten times a second") {
  Fake fake;
  ProgressBar bar{"squares", fake.io(true)};
  run(fake, bar, 299, 10ms, 300);  // 2.99 s of reports, one every 10 ms
  // The first report, then one redraw per 100 ms at most.
  CHECK(fake.writes.size() >= 29);
  CHECK(fake.writes.size() <= 31);
  CHECK_FALSE(contains(fake.all(), "\n"));
  fake.now += 100ms;
  bar.update(299, 300);  // 100 ms after the last report: drawn
  const std::size_t before = fake.writes.size();
  fake.now += 50ms;
  bar.update(299, 300);  // nothing new is drawn within 100 ms of the last redraw...
  CHECK(fake.writes.size() == before);
  fake.now += 60ms;
  bar.update(299, 300);  // ...and the latest state is drawn once they have passed
  CHECK(fake.writes.size() == before + 1);
}

TEST_CASE("on a terminal the last report draws the 100% line and ends it with a newline") {
  Fake fake;
  ProgressBar bar{"squares", fake.io(true)};
  run(fake, bar, 1000, 1ms, 1000);
  const std::string last = fake.writes.back();
  CHECK(last.back() == '\n');
  CHECK(count_occurrences(fake.all(), "\n") == 1);
  const std::string line = visible(last);
  CHECK(line.starts_with("squares: 100%|████"));
  CHECK(line.ends_with("| 1000/1000 [00:01<00:00, 1000.0 it/s]"));
  CHECK_FALSE(contains(line, " |"));  // the bar is full
  // Nothing is left to close.
  bar.close();
  CHECK(fake.writes.back() == last);
}

TEST_CASE("on a terminal the line fills the terminal's width, which is read again at every redraw") {
  Fake fake;
  fake.columns = 60;
  ProgressBar bar{"squares", fake.io(true)};
  fake.now += 1s;
  bar.update(1, 4);
  CHECK(display_width(visible(fake.writes.back())) == 59);
  fake.columns = 120;
  fake.now += 1s;
  bar.update(2, 4);
  CHECK(display_width(visible(fake.writes.back())) == 119);
  CHECK(contains(fake.writes.back(), "squares:  50%|"));
  fake.columns = 0;  // unknown: 80
  fake.now += 1s;
  bar.update(4, 4);
  CHECK(display_width(visible(fake.writes.back())) == 79);
}

TEST_CASE("without a UTF-8 locale the bar is drawn with '#' and the line is plain ASCII") {
  Fake fake;
  ProgressBar bar{"squares", fake.io(true, false)};
  fake.now += 1s;
  bar.update(10, 100);
  // 31 cells, 10%: 3 full cells.
  CHECK(fake.writes[0] == "\rsquares:  10%|###" + std::string(28, ' ') + "|  10/100 [00:01<00:09, 10.0 it/s]\x1b[K");
  for (std::size_t done = 11; done <= 100; ++done) {
    fake.now += 10ms;
    bar.update(done, 100);
  }
  const std::string all = fake.all();
  CHECK(std::none_of(all.begin(), all.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; }));
  CHECK(visible(fake.writes.back()) == "squares: 100%|" + std::string(31, '#') + "| 100/100 [00:01<00:00, 52.6 it/s]");
}

TEST_CASE("on a narrow terminal the bar is left out and a long label shortened rather than the line wrapped") {
  Fake fake;
  fake.columns = 50;
  ProgressBar bar{"a label far too long for this terminal", fake.io(true)};
  fake.now += 1s;
  bar.update(10, 100);
  const std::string line = visible(fake.writes.back());
  CHECK(line == "a label f…:  10%  10/100 [00:01<00:09, 10.0 it/s]");
  CHECK(display_width(line) == 49);
}

TEST_CASE("on a dumb terminal what is left of a longer line is cleared with spaces, not an escape sequence") {
  Fake fake;
  ProgressBarIo io = fake.io(true);
  io.ansi = false;
  ProgressBar bar{"n", std::move(io)};
  fake.now += 1s;
  bar.update(100, 0);  // "n: 100 it [00:01, 100.0 it/s]"
  fake.now += 100s;
  bar.update(101, 0);  // "n: 101 it [01:41, 1.0 it/s]": two columns shorter
  CHECK_FALSE(contains(fake.all(), "\x1b"));
  CHECK(fake.writes.back() == "\rn: 101 it [01:41, 1.0 it/s]  ");
  bar.close();
  CHECK(fake.writes.back() == "\rn: 101 it [01:41, 1.0 it/s]\n");
}

TEST_CASE("off a terminal there is no carriage return nor escape sequence, at most one line a second, and a final 100% line") {
  Fake fake;
  ProgressBar bar{"squares", fake.io(false)};
  const auto start = fake.now;
  std::vector<std::chrono::steady_clock::time_point> line_times;
  for (std::size_t done = 1; done <= 550; ++done) {
    fake.now += 10ms;
    const std::size_t before = fake.writes.size();
    bar.update(done, 550);
    if (fake.writes.size() != before) line_times.push_back(fake.now);
  }
  const std::string all = fake.all();
  CHECK_FALSE(contains(all, "\r"));
  CHECK_FALSE(contains(all, "\x1b"));
  const std::vector<std::string> lines = lines_of(all);
  REQUIRE(lines.size() == fake.writes.size());  // one line per write, each ending in '\n'
  CHECK(std::all_of(fake.writes.begin(), fake.writes.end(), [](const std::string& w) { return w.ends_with("\n"); }));
  // 5.5 s: lines at 1, 2, 3, 4 and 5 s, and the final one.
  CHECK(lines.size() == 6);
  REQUIRE(line_times.size() == lines.size());
  CHECK(line_times.front() - start >= 1s);
  for (std::size_t i = 1; i + 1 < line_times.size(); ++i) CHECK(line_times[i] - line_times[i - 1] >= 1s);
  CHECK(lines.front() == "squares:  18% 100/550 [00:01<00:04, 100.0 it/s]");
  CHECK(lines.back() == "squares: 100% 550/550 [00:05<00:00, 100.0 it/s]");
  CHECK(display_width(all) == all.size());  // no bar characters
}

TEST_CASE("off a terminal a call shorter than a second writes its final line only") {
  Fake fake;
  ProgressBar bar{"quick", fake.io(false)};
  run(fake, bar, 20, 5ms, 20);
  REQUIRE(fake.writes.size() == 1);
  CHECK(fake.writes[0] == "quick: 100% 20/20 [00:00<00:00, 200.0 it/s]\n");
  bar.close();
  CHECK(fake.writes.size() == 1);
}

TEST_CASE("an empty label leaves out the label and its colon") {
  Fake fake;
  ProgressBar bar{"", fake.io(false)};
  run(fake, bar, 4, 250ms, 4);
  CHECK(fake.writes.back() == "100% 4/4 [00:01<00:00, 4.0 it/s]\n");
}

TEST_CASE("an unknown total shows the count, the elapsed time and the rate, without bar, percent or time left") {
  SECTION("on a terminal") {
    Fake fake;
    ProgressBar bar{"lines", fake.io(true)};
    run(fake, bar, 411, 10ms, 0);  // redrawn at 10 ms, 110 ms, ..., 4110 ms
    const std::string line = visible(fake.writes.back());
    CHECK(line == "lines: 411 it [00:04, 100.0 it/s]");
    CHECK_FALSE(contains(fake.all(), "\n"));
    CHECK_FALSE(contains(fake.all(), "%"));
    fake.now += 10ms;
    bar.update(412, 0);  // within 100 ms: not drawn yet
    bar.close();         // the last copy's destruction: the latest state, and the line ends
    CHECK(fake.writes.back() == "\rlines: 412 it [00:04, 100.0 it/s]\x1b[K\n");
  }
  SECTION("off a terminal") {
    Fake fake;
    ProgressBar bar{"lines", fake.io(false)};
    run(fake, bar, 250, 10ms, 0);
    CHECK(lines_of(fake.all()) ==
          std::vector<std::string>{"lines: 100 it [00:01, 100.0 it/s]", "lines: 200 it [00:02, 100.0 it/s]"});
    bar.close();
    CHECK(fake.writes.back() == "lines: 250 it [00:02, 100.0 it/s]\n");
  }
}

TEST_CASE("a total that becomes known at the end of the input still ends with the 100% line") {
  Fake fake;
  ProgressBar bar{"lines", fake.io(false)};
  run(fake, bar, 149, 10ms, 0);
  fake.now += 10ms;
  bar.update(150, 150);
  CHECK(fake.writes.back() == "lines: 100% 150/150 [00:01<00:00, 100.0 it/s]\n");
}

TEST_CASE("a run that stops short of its total is closed with its latest state when the callback is destroyed") {
  Fake fake;
  {
    auto callback = procpool::detail::progress_callback("squares", fake.io(true));
    auto copy = callback;  // copies share one bar: the last one to go closes it
    fake.now += 1s;
    callback(42, 100);
    fake.now += 10ms;
    copy(43, 100);
    callback = nullptr;
    CHECK_FALSE(contains(fake.all(), "\n"));
  }
  CHECK(fake.writes.back().ends_with("|  43/100 [00:01<00:01, 42.6 it/s]\x1b[K\n"));
  CHECK(contains(fake.writes.back(), " 43%|"));
  CHECK(count_occurrences(fake.all(), "\n") == 1);
}

TEST_CASE("copies of the callback draw one bar") {
  Fake fake;
  {
    const auto callback = procpool::detail::progress_callback("squares", fake.io(false));
    const auto copy = callback;
    for (std::size_t done = 1; done <= 300; ++done) {
      fake.now += 10ms;
      (done % 2 == 0 ? copy : callback)(done, 300);
    }
  }
  const std::vector<std::string> lines = lines_of(fake.all());
  CHECK(lines.size() == 3);
  CHECK(lines.back() == "squares: 100% 300/300 [00:03<00:00, 100.0 it/s]");
}

TEST_CASE("a callback reused for another call draws a second bar, timed from that call's first report") {
  Fake fake;
  ProgressBar bar{"squares", fake.io(false)};
  run(fake, bar, 100, 10ms, 100);
  CHECK(fake.writes.back() == "squares: 100% 100/100 [00:01<00:00, 100.0 it/s]\n");
  fake.now += 1h;  // time between the calls does not count
  run(fake, bar, 40, 50ms, 40);
  // The clock started at the first report (done 1): 39 items in 1.95 s.
  CHECK(fake.writes.back() == "squares: 100% 40/40 [00:01<00:00, 20.0 it/s]\n");
  CHECK(lines_of(fake.all())[1] == "squares:  52% 21/40 [00:01<00:00, 20.0 it/s]");
  // A call stopped short, then another from the start: the first gets its last line then.
  run(fake, bar, 30, 10ms, 50);
  run(fake, bar, 50, 10ms, 50);
  // A call whose first report is its end (one chunk) still gets its 100% line; when it began is
  // unknown, so is its rate.
  fake.now += 1s;
  bar.update(50, 50);
  const std::vector<std::string> lines = lines_of(fake.all());
  REQUIRE(lines.size() == 6);
  CHECK(lines[3] == "squares:  60% 30/50 [00:00<00:00, 100.0 it/s]");
  CHECK(lines[4] == "squares: 100% 50/50 [00:00<00:00, 100.0 it/s]");
  CHECK(lines[5] == "squares: 100% 50/50 [00:00<00:00, ? it/s]");
}

TEST_CASE("a sink that throws or a clock that fails never makes the callback throw") {
  Fake fake;
  ProgressBarIo io = fake.io(true);
  io.write = [](std::string_view) { throw std::runtime_error("disk full"); };
  ProgressBar bar{"squares", std::move(io)};
  fake.now += 1s;
  CHECK_NOTHROW(bar.update(1, 2));
  CHECK_NOTHROW(bar.update(2, 2));
  CHECK_NOTHROW(bar.close());
  static_assert(noexcept(bar.update(0, 0)));

  ProgressBarIo broken_clock = fake.io(true);
  int calls = 0;
  broken_clock.now = [&] {
    if (++calls > 1) throw std::runtime_error("no clock");
    return fake.now;
  };
  ProgressBar other{"squares", std::move(broken_clock)};
  CHECK_NOTHROW(other.update(1, 2));
  CHECK_NOTHROW(other.update(2, 2));
}

TEST_CASE("progress_bar's callback is what MapOptions::on_progress holds") {
  static_assert(std::is_same_v<decltype(procpool::progress_bar()), decltype(procpool::MapOptions{}.on_progress)>);
  procpool::MapOptions options{.chunk_size = 0, .on_progress = procpool::progress_bar("squares")};
  CHECK(static_cast<bool>(options.on_progress));
}

TEST_CASE("a real map with progress_bar on a redirected stderr ends with a line with the label and 100%") {
  // stderr is redirected for the whole process: in a helper process of its own.
  const int status = procpool_test::run_isolated([] {
    char path[] = "/tmp/procpool-test-progress-XXXXXX";
    const int file = ::mkstemp(path);
    if (file < 0) return procpool_test::fail(1, "mkstemp");
    ::unlink(path);
    std::fflush(stderr);
    const int saved = ::dup(STDERR_FILENO);
    ::dup2(file, STDERR_FILENO);
    std::vector<long> out;
    {
      procpool::Pool pool{procpool_test::two_workers()};
      out = pool.map(slow_square, procpool_test::iota_vector(200),
                     procpool::MapOptions{.on_progress = procpool::progress_bar("squares")});
    }
    std::fflush(stderr);
    ::dup2(saved, STDERR_FILENO);
    ::close(saved);
    std::string text;
    char buf[4096];
    off_t at = 0;
    for (ssize_t n; (n = ::pread(file, buf, sizeof buf, at)) > 0; at += n)
      text.append(buf, static_cast<std::size_t>(n));
    ::close(file);
    if (out != procpool_test::squares(200)) return procpool_test::fail(2, "wrong results");
    if (contains(text, "\r") || contains(text, "\x1b")) return procpool_test::fail(3, "control characters: " + text);
    const std::vector<std::string> lines = lines_of(text);
    if (lines.empty() || !text.ends_with("\n")) return procpool_test::fail(4, "no final line: " + text);
    if (!lines.back().starts_with("squares: 100% 200/200 [")) return procpool_test::fail(5, "last line: " + text);
    if (lines.size() > 4) return procpool_test::fail(6, "more than a line a second: " + text);
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
}

TEST_CASE("a real map with progress_bar on a pseudo-terminal redraws one line sized to the terminal") {
  const int status = procpool_test::run_isolated([] {
    const int master = ::posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || ::grantpt(master) != 0 || ::unlockpt(master) != 0) return procpool_test::fail(1, "no pty");
    const int slave = ::open(::ptsname(master), O_RDWR | O_NOCTTY);
    if (slave < 0) return procpool_test::fail(2, "no pty slave");
    winsize ws{};
    ws.ws_col = 60;
    ws.ws_row = 24;
    ::ioctl(slave, TIOCSWINSZ, &ws);
    ::setenv("LANG", "C.UTF-8", 1);
    ::unsetenv("LC_ALL");
    ::unsetenv("LC_CTYPE");
    ::setenv("TERM", "xterm", 1);
    std::fflush(stderr);
    const int saved = ::dup(STDERR_FILENO);
    ::dup2(slave, STDERR_FILENO);
    std::vector<long> out;
    {
      procpool::Pool pool{procpool_test::two_workers()};
      out = pool.map(slow_square, procpool_test::iota_vector(200),
                     procpool::MapOptions{.on_progress = procpool::progress_bar("squares")});
    }
    std::fflush(stderr);
    ::dup2(saved, STDERR_FILENO);
    ::close(saved);
    // The terminal passes output on to its master side asynchronously: read until the line ends.
    std::string text;
    char buf[4096];
    pollfd readable{master, POLLIN, 0};
    while (!contains(text, "\n") && ::poll(&readable, 1, 5000) == 1) {
      const ssize_t n = ::read(master, buf, sizeof buf);
      if (n <= 0) break;
      text.append(buf, static_cast<std::size_t>(n));
    }
    ::close(slave);
    ::close(master);
    if (out != procpool_test::squares(200)) return procpool_test::fail(3, "wrong results");
    // The terminal turns the final '\n' into "\r\n".
    if (!text.ends_with("\x1b[K\r\n")) return procpool_test::fail(4, "the line is not ended: " + text);
    if (count_occurrences(text, "\n") != 1) return procpool_test::fail(5, "more than one line: " + text);
    std::size_t frames = 0;
    std::size_t from = 0;
    for (auto at = text.find('\r'); at != std::string::npos; at = text.find('\r', from)) {
      const auto end = text.find("\x1b[K", at);
      if (end == std::string::npos) break;
      const std::string frame = text.substr(at + 1, end - at - 1);
      if (display_width(frame) != 59) return procpool_test::fail(6, "a frame not 59 columns wide: " + frame);
      ++frames;
      from = end;
    }
    if (frames < 2) return procpool_test::fail(7, "fewer than two frames: " + text);
    const auto last = text.rfind("\rsquares: 100%|");
    if (last == std::string::npos || !contains(text.substr(last), "████████| 200/200 [")) {
      return procpool_test::fail(8, "no full final frame: " + text);
    }
    return 0;
  });
  INFO(procpool_test::describe_status(status));
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
}
