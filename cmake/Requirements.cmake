# What procpool needs from the system and the compiler, checked once, right after project(), so that
# an unsupported configuration stops with one message that says what was found and what to do
# (instead of hundreds of compile errors later). tests/consumer/requirements.cmake runs this same
# function with other systems and compilers.
include_guard(GLOBAL)

# procpool_check_requirements(): reads CMAKE_SYSTEM_NAME (the system being built for) and
# CMAKE_CXX_COMPILE_FEATURES (what the C++ compiler supports, as project() detected it).
function(procpool_check_requirements)
  set(problems "")
  if(NOT CMAKE_SYSTEM_NAME STREQUAL "Linux")
    if(CMAKE_SYSTEM_NAME)
      set(system "${CMAKE_SYSTEM_NAME}")
    else()
      set(system "an unknown system")
    endif()
    string(APPEND problems
      "\n  - the target system is ${system}, but procpool runs on Linux only (it uses fork, pidfd, "
      "PR_SET_PDEATHSIG and sched_setaffinity). Build on Linux, or for Linux (a toolchain file with "
      "CMAKE_SYSTEM_NAME Linux).")
  endif()
  if(NOT "cxx_std_20" IN_LIST CMAKE_CXX_COMPILE_FEATURES)
    set(compiler "${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION}")
    if(compiler STREQUAL " ")
      set(compiler "an unidentified compiler")
    endif()
    set(standards "${CMAKE_CXX_COMPILE_FEATURES}")
    list(FILTER standards INCLUDE REGEX "^cxx_std_")
    list(TRANSFORM standards REPLACE "^cxx_std_" "C++")
    if(standards)
      list(JOIN standards ", " standards)
    else()
      set(standards "none that CMake knows of")
    endif()
    string(APPEND problems
      "\n  - the C++ compiler (${compiler}, ${CMAKE_CXX_COMPILER}) does not support C++20 "
      "(standards it supports: ${standards}). procpool needs C++20 (it is tested with g++ 12 and "
      "clang++ 14): configure a new build directory with a newer compiler, e.g. -DCMAKE_CXX_COMPILER=g++-12.")
  endif()
  if(problems)
    message(FATAL_ERROR "procpool cannot be built here:${problems}")
  endif()
endfunction()
