# Compiles SOURCE and succeeds only if compilation fails with a message containing EXPECT.
#
# A line "// expect-first: <text>" in SOURCE (optional, besides its "// expect: <text>") also
# requires <text> in the compiler's FIRST error line (the first line with "error:"): the first
# error a user sees must be procpool's, not one from deep inside the standard library.
execute_process(
  COMMAND ${COMPILER} -std=c++20 -fsyntax-only -I${INCLUDE_DIR} ${SOURCE}
  RESULT_VARIABLE result
  OUTPUT_VARIABLE output
  ERROR_VARIABLE output)
if(result EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but it must be rejected")
endif()
# file(STRINGS) in tests/CMakeLists.txt escapes a semicolon of the expected text as "\;".
string(REPLACE "\\;" ";" EXPECT "${EXPECT}")
string(FIND "${output}" "${EXPECT}" found)
if(found EQUAL -1)
  message(FATAL_ERROR "${SOURCE} failed to compile, but without the message '${EXPECT}':\n${output}")
endif()

file(STRINGS "${SOURCE}" expect_first_lines REGEX "^// expect-first: ")
foreach(expect_first_line IN LISTS expect_first_lines)
  string(REGEX REPLACE "^// expect-first: " "" expect_first "${expect_first_line}")
  string(REPLACE "\\;" ";" expect_first "${expect_first}")
  # The first line of the output that reports an error (g++: "error: static assertion failed: ...",
  # clang: "error: static_assert failed due to requirement '...' \"...\"").
  string(REGEX MATCH "[^\n]*error:[^\n]*" first_error "${output}")
  string(FIND "${first_error}" "${expect_first}" found)
  if(found EQUAL -1)
    message(FATAL_ERROR "${SOURCE} failed to compile, but its first error is not procpool's '${expect_first}':\n"
                        "${first_error}\n\nThe whole output:\n${output}")
  endif()
endforeach()
message(STATUS "rejected as expected with: ${EXPECT}")
