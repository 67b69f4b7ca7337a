// procpool::detail: how the library is compiled.
//
// By default procpool is header-only: every function is defined in the headers, inline. A program
// that defines PROCPOOL_SEPARATE_COMPILATION in every translation unit (the CMake target
// procpool::compiled does this) and includes <procpool/src.hpp> in exactly one source file gets the
// library's non-template core compiled once, in that file: the headers then only declare it.
#pragma once

#ifdef PROCPOOL_SEPARATE_COMPILATION
/// Marks a function whose definition src.hpp compiles once.
#define PROCPOOL_DECL
#else
#define PROCPOOL_DECL inline
#endif
