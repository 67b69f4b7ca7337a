# Compiles SOURCE with PROCPOOL_SEPARATE_COMPILATION defined and fails if the compiler's include
# tree (-H, g++ and clang++ alike) holds a header of procpool's non-template core: a user's file in
# separate mode must only declare that core, which src.hpp compiles once.
set(fmt_flags "")
foreach(dir IN LISTS FMT_INCLUDE_DIRS)
  list(APPEND fmt_flags "-I${dir}")
endforeach()
execute_process(
  COMMAND ${COMPILER} -std=c++20 -DPROCPOOL_SEPARATE_COMPILATION -fsyntax-only -H -I${INCLUDE_DIR} ${fmt_flags} ${SOURCE}
  RESULT_VARIABLE result
  OUTPUT_VARIABLE output
  ERROR_VARIABLE output)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "${SOURCE} does not compile in separate mode:\n${output}")
endif()
string(FIND "${output}" "procpool/procpool.hpp" seen)
if(seen EQUAL -1)
  message(FATAL_ERROR "the compiler printed no include tree (-H):\n${output}")
endif()
set(core_headers
  scheduler.hpp scheduler_impl.hpp local_transport.hpp local_transport_impl.hpp pool_core_impl.hpp
  zygote.hpp zygote_client.hpp worker.hpp wire.hpp job_table.hpp lifecycle.hpp closure_references_impl.hpp)
set(found "")
foreach(header IN LISTS core_headers)
  string(REGEX MATCH "[^\n]*procpool/detail/${header}" line "${output}")
  if(line)
    list(APPEND found "${line}")
  endif()
endforeach()
if(found)
  list(JOIN found "\n" found)
  message(FATAL_ERROR "a user's file in separate mode includes procpool's core:\n${found}\n\nThe include tree:\n${output}")
endif()
message(STATUS "no header of procpool's core in the include tree")
