// procpool/format.hpp: fmt prints a procpool::Outcome as its value (through the value's own
// formatter and format spec) or as error("<what()>"), alone or in a range. Included here only
// through the umbrella header, which must provide it.
#include <fmt/core.h>
#include <fmt/ranges.h>

#include <catch2/catch.hpp>
#include <exception>
#include <procpool/procpool.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

struct NotFormattable {};

procpool::Outcome<int> failed(const std::string& what) { return std::make_exception_ptr(std::runtime_error(what)); }

}  // namespace

TEST_CASE("a successful Outcome prints its value") {
  CHECK(fmt::format("{}", procpool::Outcome<int>(42)) == "42");
  CHECK(fmt::format("{}", procpool::Outcome<std::string>(std::string("text"))) == "text");
  CHECK(fmt::format("{}", procpool::Outcome<double>(1.5)) == "1.5");
}

TEST_CASE("a failed Outcome prints error with its what() quoted and escaped") {
  CHECK(fmt::format("{}", failed("boom")) == "error(\"boom\")");
  CHECK(fmt::format("{}", failed("say \"hi\"\n")) == "error(\"say \\\"hi\\\"\\n\")");
  const procpool::Outcome<int> process_error = std::make_exception_ptr(procpool::ProcessError("worker died", -9, 4));
  CHECK(fmt::format("{}", process_error) == "error(\"worker died\")");
}

TEST_CASE("a failed Outcome whose exception does not derive from std::exception prints a fixed text") {
  const procpool::Outcome<int> odd = std::make_exception_ptr(7);
  CHECK(fmt::format("{}", odd) == "error(<an exception not derived from std::exception>)");
  const procpool::Outcome<int> null = std::exception_ptr();
  CHECK(fmt::format("{}", null) == "error(<no exception>)");
}

TEST_CASE("the format spec goes to the value's own formatter") {
  CHECK(fmt::format("{:>5}", procpool::Outcome<int>(42)) == "   42");
  CHECK(fmt::format("{:x}", procpool::Outcome<int>(255)) == "ff");
  CHECK(fmt::format("{:.2f}", procpool::Outcome<double>(3.14159)) == "3.14");
  CHECK(fmt::format("{:*<6}", procpool::Outcome<std::string>(std::string("ab"))) == "ab****");
  // A failed outcome ignores the spec that was meant for a value.
  CHECK(fmt::format("{:>5}", failed("x")) == "error(\"x\")");
}

TEST_CASE("a vector of Outcomes prints as a list through fmt/ranges.h") {
  const std::vector<procpool::Outcome<int>> outcomes{1, failed("boom"), 3};
  CHECK(fmt::format("{}", outcomes) == "[1, error(\"boom\"), 3]");
  CHECK(fmt::format("{::>3}", std::vector<procpool::Outcome<int>>{1, 22}) == "[  1,  22]");
  // Strings in a range are quoted, as fmt quotes them in a plain std::vector<std::string>.
  const std::vector<procpool::Outcome<std::string>> words{std::string("a"), std::string("b")};
  CHECK(fmt::format("{}", words) == fmt::format("{}", std::vector<std::string>{"a", "b"}));
}

TEST_CASE("an Outcome of a type fmt cannot format cannot be formatted either") {
  STATIC_REQUIRE(fmt::is_formattable<procpool::Outcome<int>>::value);
  STATIC_REQUIRE_FALSE(fmt::is_formattable<procpool::Outcome<NotFormattable>>::value);
}

TEST_CASE("the outcomes of a real try_map print with the failed item's RemoteError text") {
  procpool::Pool pool(procpool_test::two_workers());
  const auto outcomes = pool.try_map(
      [](int i) -> int {
        if (i == 1) throw std::runtime_error("odd one out");
        return i * 10;
      },
      std::vector{0, 1, 2});
  const std::string text = fmt::format("{}", outcomes);
  INFO(text);
  CHECK_THAT(text, Catch::Matchers::StartsWith("[0, error(\"procpool::Pool: item 1 in worker "));
  CHECK_THAT(text, Catch::Matchers::EndsWith(" threw std::runtime_error: odd one out\"), 20]"));
}
