// What README.md's fragment and declarations snippets may use without defining it (see the
// convention at the top of tests/readme/check_snippets.sh). They are compiled, never run: the
// variables are declared, not defined.
#pragma once

#include <procpool/procpool.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <map>
#include <optional>
#include <ranges>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

using namespace std::chrono_literals;  // NOLINT(google-global-names-in-headers): 500us, 2s in snippets

extern procpool::Pool pool;
extern std::vector<int> inputs;
extern std::vector<std::string> lines;

int square(int x);
int add(int a, int b);
int slow_square(int x);
int parse(const std::string& line);
void print_number(int n);
