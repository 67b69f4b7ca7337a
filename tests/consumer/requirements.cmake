# Checks cmake/Requirements.cmake, the function the top-level CMakeLists.txt calls right after
# project(): a system that is not Linux or a compiler without C++20 stops the configuration with one
# message saying what was found and what to do; Linux with C++20 passes. Run as
#   cmake -DPROCPOOL_SOURCE_DIR=<repo> -P requirements.cmake
# it runs itself once per case with CASE_SYSTEM / CASE_FEATURES set (as project() would set
# CMAKE_SYSTEM_NAME and CMAKE_CXX_COMPILE_FEATURES), in a child cmake, as a configuration would fail.
cmake_minimum_required(VERSION 3.22)  # script mode: the policies of the project (IN_LIST)

if(DEFINED CASE_SYSTEM)
  set(CMAKE_SYSTEM_NAME "${CASE_SYSTEM}")
  set(CMAKE_CXX_COMPILE_FEATURES "${CASE_FEATURES}")
  set(CMAKE_CXX_COMPILER_ID GNU)
  set(CMAKE_CXX_COMPILER_VERSION 9.5.0)
  set(CMAKE_CXX_COMPILER /usr/bin/g++-9)
  include("${PROCPOOL_SOURCE_DIR}/cmake/Requirements.cmake")
  procpool_check_requirements()
  message(STATUS "requirements met")
  return()
endif()

set(cxx17 "cxx_std_98;cxx_std_11;cxx_std_14;cxx_std_17;cxx_constexpr")
set(cxx20 "${cxx17};cxx_std_20")
set(failures "")

# case(NAME SYSTEM FEATURES EXPECT_OK EXPECTED_TEXT...): every text must appear in the output.
function(case name system features expect_ok)
  execute_process(
    COMMAND ${CMAKE_COMMAND} -DPROCPOOL_SOURCE_DIR=${PROCPOOL_SOURCE_DIR} -DCASE_SYSTEM=${system}
      "-DCASE_FEATURES=${features}" -P ${CMAKE_CURRENT_LIST_FILE}
    RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE out)
  set(problems "")
  if(expect_ok AND NOT result EQUAL 0)
    list(APPEND problems "it failed")
  elseif(NOT expect_ok AND result EQUAL 0)
    list(APPEND problems "it passed")
  endif()
  foreach(text IN LISTS ARGN)
    string(FIND "${out}" "${text}" at)
    if(at EQUAL -1)
      list(APPEND problems "no '${text}' in its output")
    endif()
  endforeach()
  # One message: a single error, never one per problem.
  string(REGEX MATCHALL "CMake Error" errors "${out}")
  list(LENGTH errors count)
  if(count GREATER 1)
    list(APPEND problems "${count} errors instead of one")
  endif()
  if(problems)
    list(JOIN problems "; " problems)
    set(failures "${failures}\ncase '${name}': ${problems}:\n${out}" PARENT_SCOPE)
  else()
    message(STATUS "case '${name}': as expected")
  endif()
endfunction()

case("Linux, C++20" Linux "${cxx20}" TRUE "requirements met")
case("Windows, C++20" Windows "${cxx20}" FALSE
  "procpool cannot be built here" "the target system is Windows" "Linux only")
case("Darwin, C++20" Darwin "${cxx20}" FALSE "the target system is Darwin" "Linux only")
case("Linux, C++17 only" Linux "${cxx17}" FALSE
  "procpool cannot be built here" "GNU 9.5.0" "does not support C++20"
  "standards it supports: C++98, C++11, C++14, C++17" "-DCMAKE_CXX_COMPILER=")
case("Windows, C++17 only: both problems, one message" Windows "${cxx17}" FALSE
  "the target system is Windows" "does not support C++20")
if(failures)
  message(FATAL_ERROR "cmake/Requirements.cmake:${failures}")
endif()
