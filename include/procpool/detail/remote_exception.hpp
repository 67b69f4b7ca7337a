// procpool::detail: carrying an exception from a child to the parent as (type name, what()).
#pragma once

#include <cxxabi.h>
#include <fmt/core.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <typeinfo>

#include "../codec.hpp"
#include "../error.hpp"

namespace procpool::detail {

/// What the parent learns about an exception thrown by a task in a child.
struct RemoteException {
  std::string type_name;
  std::string what;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(type_name, what);
  }
};

[[nodiscard]] inline std::string demangle(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> name(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), &std::free);
  return status == 0 && name ? std::string(name.get()) : std::string(mangled);
}

/// Describes the exception currently being handled. Call only inside a catch block.
[[nodiscard]] inline RemoteException describe_current_exception() {
  RemoteException info;
  const std::type_info* type = abi::__cxa_current_exception_type();
  info.type_name = type != nullptr ? demangle(type->name()) : "unknown exception";
  try {
    throw;
  } catch (const std::exception& e) {
    info.what = e.what();
  } catch (...) {
    info.what = "(the exception does not derive from std::exception, so it has no message)";
  }
  return info;
}

/// The RemoteError the parent throws for `info`; `context` says where it happened ("the child process
/// 1234", "item 41 (worker 3)").
[[nodiscard]] inline RemoteError make_remote_error(const RemoteException& info, const std::string& context,
                                                   std::optional<std::size_t> item = std::nullopt) {
  return RemoteError(fmt::format("{} threw {}: {}", context, info.type_name, info.what), info.type_name, info.what,
                     item);
}

}  // namespace procpool::detail
