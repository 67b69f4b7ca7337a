# Builds tests/consumer against procpool in one MODE and runs it (ctest drives this script).
file(REMOVE_RECURSE "${WORK_DIR}")
set(consumer_args -DMODE=${MODE} -DPROCPOOL_SOURCE_DIR=${PROCPOOL_SOURCE_DIR} -DCMAKE_CXX_COMPILER=${CXX_COMPILER})

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "failed: ${ARGN}\n${out}")
  endif()
endfunction()

if(MODE STREQUAL "find_package")
  # Install procpool alone (no tests, no examples) into a private prefix, then consume it.
  run(${CMAKE_COMMAND} -S ${PROCPOOL_SOURCE_DIR} -B ${WORK_DIR}/procpool-build
      -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DPROCPOOL_BUILD_TESTS=OFF -DPROCPOOL_BUILD_EXAMPLES=OFF
      -DCMAKE_INSTALL_PREFIX=${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/procpool-build)  # procpool::compiled's archive
  run(${CMAKE_COMMAND} --install ${WORK_DIR}/procpool-build)
  if(NOT EXISTS ${WORK_DIR}/prefix/include/procpool/procpool.hpp)
    message(FATAL_ERROR "the install did not place include/procpool/procpool.hpp")
  endif()
  file(GLOB_RECURSE archive "${WORK_DIR}/prefix/*/libprocpool.a")
  if(NOT archive)
    message(FATAL_ERROR "the install did not place procpool::compiled's libprocpool.a")
  endif()
  list(APPEND consumer_args -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
endif()

run(${CMAKE_COMMAND} -S ${CMAKE_CURRENT_LIST_DIR} -B ${WORK_DIR}/consumer-build ${consumer_args})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build)
run(${WORK_DIR}/consumer-build/consumer)
run(${WORK_DIR}/consumer-build/consumer_compiled)
message(STATUS "consumer and consumer_compiled built and ran through ${MODE}")
