# Compiler settings for procpool's own targets (tests, examples, benchmarks): never imposed on users.
include_guard(GLOBAL)
find_package(Threads REQUIRED)

# Sanitizers, for everything procpool builds for itself (including third-party mains).
add_library(procpool_sanitizers INTERFACE)
if(PROCPOOL_SANITIZERS)
  target_compile_options(procpool_sanitizers INTERFACE
    -fsanitize=${PROCPOOL_SANITIZERS} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(procpool_sanitizers INTERFACE -fsanitize=${PROCPOOL_SANITIZERS})
endif()

# Warnings, for procpool's own code.
add_library(procpool_warnings INTERFACE)
target_compile_options(procpool_warnings INTERFACE -Wall -Wextra -Wpedantic)
if(PROCPOOL_WARNINGS_AS_ERRORS)
  target_compile_options(procpool_warnings INTERFACE -Werror)
  if(PROCPOOL_SANITIZERS AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # GCC 12 reports -Wmaybe-uninitialized false positives inside libstdc++ (std::function,
    # std::regex) once sanitizer instrumentation changes its inlining; keep them visible, not fatal.
    target_compile_options(procpool_warnings INTERFACE -Wno-error=maybe-uninitialized)
  endif()
endif()

add_library(procpool_project_options INTERFACE)
target_link_libraries(procpool_project_options INTERFACE
  procpool::procpool procpool_warnings procpool_sanitizers Threads::Threads)
