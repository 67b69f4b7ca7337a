// procpool: the exception hierarchy. Everything the library throws derives from procpool::Error.
//
//   std::runtime_error
//   └── procpool::Error
//       ├── procpool::DecodeError      bytes that cannot be decoded
//       ├── procpool::SystemError      a failed system call (carries its std::error_code)
//       └── procpool::ItemError        one item (or one Process's call) failed; item() says which
//           ├── procpool::RemoteError  the task threw
//           ├── procpool::ProcessError the child died or exited early
//           └── procpool::TimeoutError the task ran past its timeout
#pragma once

#include <fmt/core.h>

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
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

/// A failed system call (a pipe, a fork, a mapping...): a procpool::Error whose message ends with
/// the errno text, e.g. "procpool: cannot create a pipe: Too many open files (errno 24)", and which
/// carries the errno as a std::error_code, so `e.code() == std::errc::too_many_files_open` works.
class SystemError : public Error {
 public:
  /// `what` says what failed; `errno_value` is the errno the system call left.
  SystemError(const std::string& what, int errno_value)
      : Error(fmt::format("{}: {} (errno {})", what, std::system_category().message(errno_value), errno_value)),
        errno_(errno_value) {}

  /// The errno of the failed call.
  [[nodiscard]] int error_number() const noexcept { return errno_; }
  /// The errno of the failed call as a std::error_code of std::system_category() (which compares
  /// equal to the matching std::errc).
  [[nodiscard]] std::error_code code() const noexcept { return {errno_, std::system_category()}; }

 private:
  int errno_;
};

namespace detail {
/// SystemError was procpool::detail::SystemError before it became public; library code still names it so.
using procpool::SystemError;
}  // namespace detail

/// Base of the errors that replace one item's result: RemoteError, ProcessError and TimeoutError.
/// `catch (const procpool::ItemError& e)` catches "this item failed", whatever the way; item()
/// says which input it was, when known.
class ItemError : public Error {
 public:
  /// `message` is the full human-readable text; `item` the input index of the failed item, if any.
  explicit ItemError(const std::string& message, std::optional<std::size_t> item = std::nullopt)
      : Error(message), item_(item) {}

  /// The input index of the failed item, when the task came from a Pool map (nullopt for a
  /// Process, a submit, or when the failing item is not known).
  [[nodiscard]] std::optional<std::size_t> item() const noexcept { return item_; }

 private:
  std::optional<std::size_t> item_;
};

/// A task threw an exception in a child process. Carries the exception's type name and what().
class RemoteError : public ItemError {
 public:
  /// `message` is the full human-readable text; `type_name` and `remote_what` are the remote exception's parts.
  RemoteError(const std::string& message, std::string type_name, std::string remote_what,
              std::optional<std::size_t> item = std::nullopt)
      : ItemError(message, item), type_name_(std::move(type_name)), remote_what_(std::move(remote_what)) {}

  /// The demangled type name of the exception thrown in the child (e.g. "std::out_of_range").
  [[nodiscard]] const std::string& type_name() const noexcept { return type_name_; }
  /// The what() of the exception thrown in the child.
  [[nodiscard]] const std::string& remote_what() const noexcept { return remote_what_; }

 private:
  std::string type_name_;
  std::string remote_what_;
};

/// A child process ended without delivering a result: killed by a signal, or exited early.
/// item() is the input index of the item that was running when the worker died, when known.
class ProcessError : public ItemError {
 public:
  /// `exitcode` follows Python's convention: the exit code, or -signal when killed by a signal.
  ProcessError(const std::string& message, int exitcode, std::optional<std::size_t> item = std::nullopt)
      : ItemError(message, item), exitcode_(exitcode) {}

  /// The exit code, or the negated signal number when the process was killed by a signal.
  [[nodiscard]] int exitcode() const noexcept { return exitcode_; }

 private:
  int exitcode_;
};

/// A task ran longer than its timeout; the worker running it was killed (and, in a Pool, replaced).
/// item() is the input index of the item that timed out, when the task came from a Pool map.
class TimeoutError : public ItemError {
 public:
  /// `message` is the full human-readable text; `item` the input index of the item, if any.
  TimeoutError(const std::string& message, std::optional<std::size_t> item = std::nullopt)  // NOLINT: as before
      : ItemError(message, item) {}
};

/// A task that was cancelled (Future::cancel) before it finished: it never ran, or it was stopped
/// (its worker killed and replaced).
class CancelledError : public Error {
 public:
  using Error::Error;
};

}  // namespace procpool
