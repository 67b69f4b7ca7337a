// procpool: the library's version, kept in step with project(VERSION) in CMakeLists.txt.
#pragma once

#define PROCPOOL_VERSION_MAJOR 0
#define PROCPOOL_VERSION_MINOR 1
#define PROCPOOL_VERSION_PATCH 0

namespace procpool {
/// The library version as "major.minor.patch".
inline constexpr const char* version = "0.1.0";
}  // namespace procpool
