// Process{f, args...} with arguments f cannot take: procpool's static_assert is the first error
// (not a page of failed class template argument deduction candidates).
// expect: procpool::Process: the callable cannot be called with these arguments
// expect-first: procpool::Process: the callable cannot be called with these arguments
#include <procpool/process.hpp>
#include <string>

int main() {
  procpool::Process p{[](int x) { return x + 1; }, std::string("not a number")};
  p.start();
}
