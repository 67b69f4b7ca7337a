// procpool: a tqdm-like progress bar for MapOptions::on_progress.
//
//   #include <procpool/progress.hpp>
//   auto squares = pool.map(slow_square, inputs, {.on_progress = procpool::progress_bar("squares")});
//
// On a terminal (stderr is a tty) it draws one line on stderr and redraws it in place, at most
// about ten times a second, sized to the terminal's width:
//
//   squares:  46%|█████████████▊                |  92/200 [00:00<00:00, 349.9 it/s]
//
// then draws the final state (100%) and ends the line when the last item is done. Otherwise (a
// file, a pipe, a CI log) it writes plain lines, with no carriage return and no escape sequence,
// the first after a second and then at most one a second, and always a final one:
//
//   squares: 100% 200/200 [00:00<00:00, 342.8 it/s]
//
// Details:
// - Time and rate: the clock starts when progress_bar() is called, so create it in the call's
//   options as above. The rate is items per second over the whole run (it/s, or s/it below one
//   item a second) and the time left is the remaining items at that rate.
// - Unknown totals (an input range without a size reports total 0 until its end is read): the line
//   shows the count, elapsed time and rate, without bar, percent or time left. A run that never
//   reaches its total (an abandoned imap, a call ended by an exception) gets its final line when
//   the last copy of the callback is destroyed.
// - One bar per callback: copies of the returned std::function share their state and draw one bar.
//   Reused for a later call, it draws a new bar for it: a report after the total was reached, or
//   one that goes backwards, begins a new run, whose clock starts at that report (the pool reports
//   only when the count moved, so a report after the end is another call's).
// - A call over no items never reports progress, and draws nothing.
// - Threads: the pool calls on_progress on the thread waiting on it, one call at a time; the
//   callback also locks its own mutex, so copies used by calls on different pools at once are
//   safe (though their bars then take turns on one line).
// - Output: each redraw or line is formatted first and written with one fwrite to stderr (then
//   flushed), so it is not interleaved mid-line with other writes through stdio. Output errors
//   are ignored and nothing throws: a progress bar never fails the call it reports on.
// - Terminal details: the bar uses Unicode block characters (in eighths) when LC_ALL, LC_CTYPE or
//   LANG (the first one set) names UTF-8, and '#' otherwise; the width is re-read at every redraw
//   (TIOCGWINSZ; 80 columns if unknown) and the line leaves the last column free; with TERM=dumb
//   the rest of the line is cleared with spaces instead of the ESC [ K sequence.
//
// procpool.hpp does not include this header (it would add about 0.2 s, some 5%, to the umbrella's
// parse time): include <procpool/progress.hpp> to use it.
#pragma once

#include <fmt/core.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace procpool {

namespace detail {

/// Where a ProgressBar writes, what it writes for, and what time it is. Tests fake all of it.
struct ProgressBarIo {
  /// Receives each redraw (terminal) or line (otherwise) whole, in one call.
  std::function<void(std::string_view)> write;
  /// The current time; the run's clock starts at the ProgressBar's construction.
  std::function<std::chrono::steady_clock::time_point()> now = [] { return std::chrono::steady_clock::now(); };
  /// The terminal's width in columns, asked at every redraw; 0 (or no function): 80.
  std::function<std::size_t()> columns{};
  /// Redraw one line in place ('\r'), or write plain lines.
  bool terminal = false;
  /// Unicode block characters for the bar, or '#'.
  bool unicode = true;
  /// Clear the rest of a redrawn line with ESC [ K (else with spaces, for TERM=dumb).
  bool ansi = true;
};

/// Whether the locale named by the environment (LC_ALL, else LC_CTYPE, else LANG: the first that
/// is set and not empty) uses UTF-8.
[[nodiscard]] inline bool locale_is_utf8(const char* lc_all, const char* lc_ctype, const char* lang) noexcept {
  const char* name = nullptr;
  for (const char* v : {lc_all, lc_ctype, lang}) {
    if (v != nullptr && *v != '\0') {
      name = v;
      break;
    }
  }
  if (name == nullptr) return false;
  // "UTF-8", "utf8", "UTF8" in any case, e.g. en_US.UTF-8 or C.utf8.
  for (const char* p = name; *p != '\0'; ++p) {
    auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(p[0]) == 'u' && lower(p[1]) == 't' && lower(p[2]) == 'f') {
      const char* q = p + 3;
      if (*q == '-' || *q == '_') ++q;
      if (*q == '8') return true;
    }
  }
  return false;
}

/// The width of the terminal on `fd`, or 0 when it is not a terminal or does not say.
[[nodiscard]] inline std::size_t terminal_columns(int fd) noexcept {
  winsize ws{};
  if (::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 0;
}

/// A duration as tqdm shows it: MM:SS, or H:MM:SS from an hour on; "?" when not finite.
[[nodiscard]] inline std::string format_duration(double seconds) {
  if (!(seconds <= 1e9)) return "?";  // also NaN and infinity
  if (seconds < 0) seconds = 0;
  const auto s = static_cast<unsigned long long>(seconds);
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{:02}:{:02}", s / 60, s % 60);
}

/// A rate in items per second as shown: "131.2 it/s", "2.5 s/it" below one a second, "? it/s"
/// when unknown (not positive or not finite).
[[nodiscard]] inline std::string format_rate(double per_second) {
  if (!(per_second > 0) || per_second == std::numeric_limits<double>::infinity()) return "? it/s";
  if (per_second < 1) return fmt::format("{:.1f} s/it", 1 / per_second);
  return fmt::format("{:.1f} it/s", per_second);
}

/// Display width of UTF-8 text, as code points (no wide characters in a label, please).
[[nodiscard]] inline std::size_t display_width(std::string_view text) noexcept {
  std::size_t n = 0;
  for (const char c : text) n += (static_cast<unsigned char>(c) & 0xC0U) != 0x80U ? 1 : 0;
  return n;
}

/// The first `width` code points of UTF-8 text.
[[nodiscard]] inline std::string_view first_columns(std::string_view text, std::size_t width) noexcept {
  std::size_t seen = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0U) != 0x80U) {
      if (seen == width) return text.substr(0, i);
      ++seen;
    }
  }
  return text;
}

/// One state of a progress line, to render.
struct ProgressFrame {
  std::string_view label;
  std::size_t done = 0;
  std::size_t total = 0;  ///< 0: unknown
  double elapsed = 0;     ///< seconds since the run started
  double rate = 0;        ///< items per second; not positive: unknown
};

/// The text of a progress line (no '\r', no newline). With `columns` 0 it is a plain line without
/// bar; otherwise the bar fills the line to `columns` - 1 display columns (the last column stays
/// free so the cursor never waits to wrap), dropped when fewer than 4 cells would remain, and a
/// label too long for the line is shortened.
[[nodiscard]] inline std::string render_progress_line(const ProgressFrame& f, std::size_t columns, bool unicode) {
  const double elapsed = f.elapsed;
  std::string stats;  // after the bar: " 420/1000 [00:03<00:04, 131.2 it/s]"
  std::string percent;
  if (f.total == 0) {
    stats = fmt::format("{} it [{}, {}]", f.done, format_duration(elapsed), format_rate(f.rate));
  } else {
    const std::size_t done = f.done < f.total ? f.done : f.total;
    const double left = done == f.total ? 0.0
                        : f.rate > 0    ? static_cast<double>(f.total - done) / f.rate
                                        : std::numeric_limits<double>::quiet_NaN();
    // Floor, so 100% means done: 999/1000 shows 99%.
    const auto pct = static_cast<unsigned>(static_cast<double>(done) * 100.0 / static_cast<double>(f.total));
    percent = fmt::format("{:3}%", done == f.total ? 100U : (pct > 99U ? 99U : pct));
    // The count padded to the total's width, so the bar does not shift as it grows.
    const std::string total = fmt::format("{}", f.total);
    stats = fmt::format("{:>{}}/{} [{}<{}, {}]", f.done, total.size(), total, format_duration(elapsed),
                        format_duration(left), format_rate(f.rate));
  }
  std::string label{f.label};
  auto prefix = [&] { return label.empty() ? std::string{} : label + ": "; };
  auto plain = [&] { return percent.empty() ? prefix() + stats : prefix() + percent + " " + stats; };
  if (columns == 0) return plain();

  const std::size_t avail = columns > 1 ? columns - 1 : 1;
  if (f.total != 0) {
    // prefix, percent, '|', bar, '|', ' ', stats
    const std::size_t fixed = display_width(prefix()) + display_width(percent) + 3 + display_width(stats);
    if (fixed + 4 <= avail) {
      const std::size_t cells = avail - fixed;
      const std::size_t done = f.done < f.total ? f.done : f.total;
      const double fraction = static_cast<double>(done) / static_cast<double>(f.total);
      std::string bar;
      bar.reserve(cells * 3);
      std::size_t used = 0;
      if (unicode) {
        const auto eighths = static_cast<std::size_t>(fraction * static_cast<double>(cells) * 8);
        static constexpr std::string_view partial[8] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
        for (; used < eighths / 8 && used < cells; ++used) bar += "█";
        if (used < cells && eighths % 8 != 0) {
          bar += partial[eighths % 8];
          ++used;
        }
      } else {
        const auto full = static_cast<std::size_t>(fraction * static_cast<double>(cells));
        for (; used < full && used < cells; ++used) bar += '#';
      }
      bar.append(cells - used, ' ');
      return prefix() + percent + "|" + bar + "| " + stats;
    }
  }
  std::string line = plain();
  const std::size_t width = display_width(line);
  if (width > avail && !label.empty()) {
    // Shorten the label (ending it with an ellipsis) rather than wrap the line.
    const std::size_t excess = width - avail;
    const std::size_t label_width = display_width(label);
    const std::string_view ellipsis = unicode ? "…" : ".";
    if (label_width > excess + 1) {
      label = std::string{first_columns(label, label_width - excess - 1)} + std::string{ellipsis};
    } else {
      label.clear();
    }
    line = plain();
  }
  return line;
}

/// The state behind procpool::progress_bar: see the comment at the top of this file.
class ProgressBar {
 public:
  /// A terminal line is redrawn at most this often (and at the end of a run).
  static constexpr std::chrono::milliseconds redraw_interval{100};
  /// Plain lines are written at most this often (and at the end of a run).
  static constexpr std::chrono::milliseconds line_interval{1000};

  ProgressBar(std::string label, ProgressBarIo io) : label_(std::move(label)), io_(std::move(io)) {
    start_ = io_.now();
  }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  ProgressBar(ProgressBar&&) = delete;
  ProgressBar& operator=(ProgressBar&&) = delete;
  /// Finishes a run that did not reach its total (see close()).
  ~ProgressBar() { close(); }

  /// A report from on_progress: `done` items of `total` (0 while unknown).
  void update(std::size_t done, std::size_t total) noexcept {
    try {
      const std::lock_guard lock{mutex_};
      const auto now = io_.now();
      if (phase_ == Phase::running && (done < done_ || (total != 0 && total_ != 0 && total != total_))) {
        // Reports went backwards or the total changed: another call reuses this callback.
        finish_unended();
        phase_ = Phase::finished;
      }
      if (phase_ != Phase::running) {
        if (phase_ == Phase::finished) {  // a later run: its clock starts now
          start_ = now;
          base_ = done;
        }
        phase_ = Phase::running;
        drawn_ = false;
        last_out_ = start_;
      }
      done_ = done;
      total_ = total;
      at_ = now;
      if (total != 0 && done >= total) {
        emit(true);
        phase_ = Phase::finished;
        return;
      }
      const bool due =
          io_.terminal ? (!drawn_ || now - last_out_ >= redraw_interval) : now - last_out_ >= line_interval;
      if (due) {
        emit(false);
        last_out_ = now;
      } else {
        pending_ = true;
      }
    } catch (...) {
      // Output must never fail the call it reports on.
    }
  }

  /// Ends a run that did not reach its total (unknown total, abandoned imap, exception): draws its
  /// latest state and ends the line on a terminal; writes it as a last line otherwise, if it
  /// changed since the last one. Called by the destructor.
  void close() noexcept {
    try {
      const std::lock_guard lock{mutex_};
      if (phase_ == Phase::running) finish_unended();
      phase_ = Phase::finished;
    } catch (...) {
    }
  }

 private:
  enum class Phase { idle, running, finished };

  /// Writes the latest state as the run's last output (caller holds the lock).
  void finish_unended() {
    if (io_.terminal ? drawn_ : pending_) emit(true);
  }

  /// Writes the current state: a redraw, or a line; `last` ends a terminal line.
  void emit(bool last) {
    const double elapsed = std::chrono::duration<double>(at_ - start_).count();
    const std::size_t items = done_ > base_ ? done_ - base_ : 0;
    const double rate = elapsed > 0 && items > 0 ? static_cast<double>(items) / elapsed : 0.0;
    const ProgressFrame frame{label_, done_, total_, elapsed, rate};
    std::string out;
    if (io_.terminal) {
      std::size_t columns = io_.columns ? io_.columns() : 0;
      if (columns == 0) columns = 80;
      const std::string line = render_progress_line(frame, columns, io_.unicode);
      const std::size_t width = display_width(line);
      out.reserve(line.size() + 8);
      out += '\r';
      out += line;
      if (io_.ansi) {
        out += "\x1b[K";
      } else if (width < drawn_width_) {
        out.append(drawn_width_ - width, ' ');
      }
      drawn_width_ = width;
      if (last) out += '\n';
      drawn_ = !last;
    } else {
      out = render_progress_line(frame, 0, io_.unicode);
      out += '\n';
    }
    pending_ = false;
    if (last) drawn_width_ = 0;
    if (io_.write) io_.write(out);
  }

  std::string label_;
  ProgressBarIo io_;
  std::mutex mutex_;
  Phase phase_ = Phase::idle;
  std::chrono::steady_clock::time_point start_{};     // the run's clock
  std::chrono::steady_clock::time_point at_{};        // the latest report
  std::chrono::steady_clock::time_point last_out_{};  // the latest redraw or line
  std::size_t base_ = 0;                              // items done when the run's clock started
  std::size_t done_ = 0;
  std::size_t total_ = 0;
  std::size_t drawn_width_ = 0;  // display width of the line on screen
  bool drawn_ = false;           // a terminal line is on screen and not ended
  bool pending_ = false;         // reports since the latest output
};

/// The ProgressBarIo of progress_bar(): stderr, whether it is a terminal, its width, the locale.
[[nodiscard]] inline ProgressBarIo stderr_progress_io() {
  ProgressBarIo io;
  io.write = [](std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stderr);
    std::fflush(stderr);
  };
  io.terminal = ::isatty(STDERR_FILENO) == 1;
  io.columns = [] { return terminal_columns(STDERR_FILENO); };
  io.unicode = locale_is_utf8(std::getenv("LC_ALL"), std::getenv("LC_CTYPE"), std::getenv("LANG"));
  const char* term = std::getenv("TERM");
  io.ansi = term == nullptr || std::string_view{term} != "dumb";
  return io;
}

/// An on_progress callback drawing a ProgressBar through `io`; its copies share the bar, which
/// the last copy's destruction closes.
[[nodiscard]] inline std::function<void(std::size_t done, std::size_t total)> progress_callback(std::string label,
                                                                                                ProgressBarIo io) {
  auto bar = std::make_shared<ProgressBar>(std::move(label), std::move(io));
  return [bar = std::move(bar)](std::size_t done, std::size_t total) { bar->update(done, total); };
}

}  // namespace detail

/// A MapOptions::on_progress callback that shows a tqdm-like progress bar on stderr, labelled
/// `label`: redrawn in place on a terminal, plain lines (about one a second, and a final one with
/// 100%) otherwise. Copies share one bar. See the comment at the top of <procpool/progress.hpp>.
[[nodiscard]] inline std::function<void(std::size_t done, std::size_t total)> progress_bar(std::string label = {}) {
  return detail::progress_callback(std::move(label), detail::stderr_progress_io());
}

}  // namespace procpool
