// The Catch2 2.x entry point shared by every test executable (Catch2 3 brings its own).
// Catch2's own SIGSEGV/SIGABRT handlers would be inherited by every forked child and print a
// test report from inside a crashing child; procpool's tests want the plain default dispositions.
#define CATCH_CONFIG_MAIN
#define CATCH_CONFIG_NO_POSIX_SIGNALS
#include <catch2/catch.hpp>
