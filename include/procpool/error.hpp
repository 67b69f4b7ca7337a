// procpool: the exception hierarchy. Everything the library throws derives from procpool::Error.
#pragma once

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

namespace procpool {

/// Root of every exception procpool throws (a std::runtime_error, so `catch (std::exception&)` works too).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Bytes could not be decoded: truncated, oversized or corrupt input. Decoding never reads out of bounds.
class DecodeError : public Error {
 public:
  using Error::Error;
};

/// A task threw an exception in a child process. Carries the exception's type name and what().
class RemoteError : public Error {
 public:
  /// `message` is the full human-readable text; `type_name` and `remote_what` are the remote exception's parts.
  RemoteError(const std::string& message, std::string type_name, std::string remote_what,
              std::optional<std::size_t> item = std::nullopt)
      : Error(message), type_name_(std::move(type_name)), remote_what_(std::move(remote_what)), item_(item) {}

  /// The demangled type name of the exception thrown in the child (e.g. "std::out_of_range").
  [[nodiscard]] const std::string& type_name() const noexcept { return type_name_; }
  /// The what() of the exception thrown in the child.
  [[nodiscard]] const std::string& remote_what() const noexcept { return remote_what_; }
  /// The input index of the failed item, when the task came from a Pool map.
  [[nodiscard]] std::optional<std::size_t> item() const noexcept { return item_; }

 private:
  std::string type_name_;
  std::string remote_what_;
  std::optional<std::size_t> item_;
};

/// A child process ended without delivering a result: killed by a signal, or exited early.
class ProcessError : public Error {
 public:
  /// `exitcode` follows Python's convention: the exit code, or -signal when killed by a signal.
  ProcessError(const std::string& message, int exitcode, std::optional<std::size_t> item = std::nullopt)
      : Error(message), exitcode_(exitcode), item_(item) {}

  /// The exit code, or the negated signal number when the process was killed by a signal.
  [[nodiscard]] int exitcode() const noexcept { return exitcode_; }
  /// The input index of the item that was running when the worker died, when known.
  [[nodiscard]] std::optional<std::size_t> item() const noexcept { return item_; }

 private:
  int exitcode_;
  std::optional<std::size_t> item_;
};

/// A task ran longer than its timeout; the worker running it was killed (and, in a Pool, replaced).
class TimeoutError : public Error {
 public:
  TimeoutError(const std::string& message, std::optional<std::size_t> item = std::nullopt)
      : Error(message), item_(item) {}

  /// The input index of the item that timed out, when the task came from a Pool map.
  [[nodiscard]] std::optional<std::size_t> item() const noexcept { return item_; }

 private:
  std::optional<std::size_t> item_;
};

}  // namespace procpool
