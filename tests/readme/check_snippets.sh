#!/usr/bin/env bash
# Compiles the C++ snippets of README.md, and runs those that are programs, so that the README never
# shows code that does not build. ctest runs it ("readme: ..." in tests/CMakeLists.txt); by hand:
#   tests/readme/check_snippets.sh [--only WHAT] README.md g++ /tmp/snippets -Iinclude -lfmt
# WHAT: "fragments" (the fragment and declarations snippets) or one program or source snippet's
# NAME, so that ctest can run the parts in parallel; without --only, everything.
#
# THE CONVENTION. Every ```cpp block of the README is preceded, on the line just before its fence,
# by a marker:
#
#   <!-- ci: snippet NAME KIND [-DMACRO...] -->
#
# NAME: letters, digits and underscores, unique in the README. KIND is one of:
#   program                 a whole program with main(): compiled, linked and run; it must exit 0.
#                           If the README shows what it prints, put "<!-- ci: output NAME -->" on
#                           the line before that block's fence (```text): stdout must be exactly that.
#   fragment                statements: placed in the body of a function, compiled, not run.
#   declarations            namespace-scope code (types, functions, #includes): compiled.
#   declarations+fragment   both in one block: the lines before the block's FIRST EMPTY LINE are
#                           declarations, the rest are statements (so no empty line among the
#                           declarations).
#   source                  a translation unit of its own (no prelude), compiled, not linked.
# Words after KIND starting with -D are macro definitions for that snippet (program and source only).
#
# Fragments and declarations are compiled together in one translation unit, each snippet in a
# namespace of its own (readme_NAME), after tests/readme/prelude.hpp, which includes
# <procpool/procpool.hpp>, the standard headers and std::chrono_literals, and declares what snippets
# may use without defining: `pool` (a procpool::Pool), `inputs` (std::vector<int>), `lines`
# (std::vector<std::string>), and the functions square, add, slow_square, parse, print_number. A
# snippet may define its own of these names: its namespace's hide the prelude's. #include lines of a
# snippet are moved to the top of the file. Compiler messages point at README.md's own lines (#line).
# Everything is compiled with -std=c++20 -Wall -Wextra -Werror (unused variables, parameters and
# functions allowed: fragments show calls whose results they do not use).
#
# Other code blocks (```cmake, ```sh, ```text) are not compiled. A ```cpp block that must not be
# compiled can be marked "<!-- ci: not compiled: REASON -->" instead; use it sparingly.
set -euo pipefail

only=""
if [ "${1:-}" = --only ]; then
  only=$2
  shift 2
fi
if [ $# -lt 3 ]; then
  echo "usage: $0 [--only fragments|NAME] README.md COMPILER WORK_DIR [compiler flags...]" >&2
  exit 2
fi
readme=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
cxx=$2
work=$3
shift 3
# Link inputs (-l, -L, libraries) go only to the commands that link.
extra_flags=()
link_flags=()
for flag in "$@"; do
  case "$flag" in
    -l* | -L* | *.so | *.so.* | *.a) link_flags+=("$flag") ;;
    *) extra_flags+=("$flag") ;;
  esac
done
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
flags=(-std=c++20 -Wall -Wextra -Werror -Wno-unused-variable -Wno-unused-but-set-variable
  -Wno-unused-parameter -Wno-unused-function -Wno-unused-local-typedefs)

rm -rf "$work"
mkdir -p "$work/snippets"

# 1. Split the README: for each marked block, snippets/NAME.code (its lines), NAME.kind, NAME.line
#    (README line of its first code line), NAME.defines; for each output block, NAME.expected.
awk -v dir="$work/snippets" -v readme="$readme" '
  function fail(msg) { printf "%s:%d: %s\n", readme, NR, msg > "/dev/stderr"; failed = 1 }
  BEGIN { state = "text" }
  state == "code" || state == "output" {
    if ($0 ~ /^```/) { close(out); state = "text"; next }
    if (first) { print NR > (dir "/" name ".line"); close(dir "/" name ".line"); first = 0 }
    print > out
    next
  }
  /^<!-- ci: snippet / {
    n = split($0, w, " ")
    if (w[n] != "-->" || n < 6) { fail("malformed marker (<!-- ci: snippet NAME KIND -->)"); next }
    name = w[4]; kind = w[5]
    if (name !~ /^[A-Za-z_][A-Za-z0-9_]*$/) { fail("snippet name \"" name "\" is not an identifier"); next }
    if (kind !~ /^(program|fragment|declarations|declarations\+fragment|source)$/) {
      fail("unknown snippet kind \"" kind "\""); next
    }
    if (name in seen) { fail("snippet " name " appears twice"); next }
    seen[name] = 1
    defines = ""
    for (i = 6; i < n; i++) {
      if (w[i] !~ /^-D[A-Za-z_][A-Za-z0-9_]*(=[^ ]*)?$/) { fail("\"" w[i] "\" is not a -D macro definition"); next }
      defines = defines w[i] "\n"
    }
    printf "%s", kind > (dir "/" name ".kind"); close(dir "/" name ".kind")
    printf "%s", defines > (dir "/" name ".defines"); close(dir "/" name ".defines")
    pending = "snippet"; pending_line = NR
    next
  }
  /^<!-- ci: output / {
    n = split($0, w, " ")
    if (n != 5 || w[5] != "-->") { fail("malformed marker (<!-- ci: output NAME -->)"); next }
    name = w[4]; pending = "output"; pending_line = NR
    next
  }
  /^<!-- ci: not compiled/ { pending = "skip"; pending_line = NR; next }
  /^```/ {
    if (pending == "snippet") {
      if ($0 != "```cpp") fail("a snippet marker must be followed by a ```cpp block")
      state = "code"; out = dir "/" name ".code"; printf "" > out; first = 1
    } else if (pending == "output") {
      state = "output"; out = dir "/" name ".expected"; printf "" > out; first = 0
    } else if (pending == "skip") {
      state = "skipped"
    } else if ($0 == "```cpp") {
      fail("a ```cpp block without a <!-- ci: snippet NAME KIND --> marker on the line before it")
      state = "skipped"
    } else {
      state = "skipped"
    }
    pending = ""
    if (state == "skipped") { while ((getline line) > 0) { if (line ~ /^```/) break } ; state = "text" }
    next
  }
  {
    if (pending != "") { printf "%s:%d: a ci marker must be on the line just before a fence\n", readme, pending_line > "/dev/stderr"; failed = 1; pending = "" }
  }
  END { exit failed }
' "$readme"

shopt -s nullglob
codes=("$work"/snippets/*.code)
if [ ${#codes[@]} -eq 0 ]; then
  echo "$readme has no marked snippet" >&2
  exit 1
fi
if [ -n "$only" ] && [ "$only" != fragments ] && [ ! -f "$work/snippets/$only.code" ]; then
  echo "$readme has no snippet named $only" >&2
  exit 1
fi
for expected in "$work"/snippets/*.expected; do
  name=$(basename "$expected" .expected)
  if [ "$(cat "$work/snippets/$name.kind" 2>/dev/null)" != program ]; then
    echo "$readme: output block for $name, which is not a program snippet" >&2
    exit 1
  fi
done

# 2. The fragments and declarations: one translation unit.
tu="$work/fragments.cpp"
{
  echo "// Generated by tests/readme/check_snippets.sh from $readme"
  echo "#include \"$here/prelude.hpp\""
} >"$tu"
count=0
for code in "${codes[@]}"; do
  name=$(basename "$code" .code)
  kind=$(cat "$work/snippets/$name.kind")
  line=$(cat "$work/snippets/$name.line" 2>/dev/null || echo 1)
  case "$kind" in program | source) continue ;; esac
  count=$((count + 1))
  # Declarations and statements, with their first README line each.
  decl="$work/snippets/$name.decl" stmt="$work/snippets/$name.stmt"
  : >"$decl"
  : >"$stmt"
  stmt_line=$line
  case "$kind" in
    fragment) cp "$code" "$stmt" ;;
    declarations) cp "$code" "$decl" ;;
    declarations+fragment)
      split=$(grep -n -m1 '^[[:space:]]*$' "$code" | cut -d: -f1 || true)
      if [ -z "$split" ]; then
        echo "$readme:$line: snippet $name is declarations+fragment but has no empty line" >&2
        exit 1
      fi
      head -n $((split - 1)) "$code" >"$decl"
      tail -n +$((split + 1)) "$code" >"$stmt"
      stmt_line=$((line + split))
      ;;
  esac
  {
    # The snippet's #includes first, at global scope; each line keeps its README line number.
    n=0
    while IFS= read -r text; do
      if [[ "$text" =~ ^[[:space:]]*#[[:space:]]*include ]]; then
        echo "#line $((line + n)) \"$readme\""
        echo "$text"
      fi
      n=$((n + 1))
    done <"$decl"
    echo "namespace readme_$name {"
    echo "#line $line \"$readme\""
    # #include lines become empty lines, so that the others keep their numbers.
    sed -E 's/^[[:space:]]*#[[:space:]]*include.*$//' "$decl"
    if [ -s "$stmt" ]; then
      echo "[[maybe_unused]] void body() {"
      echo "#line $stmt_line \"$readme\""
      cat "$stmt"
      echo "}"
    fi
    echo "}  // namespace readme_$name"
  } >>"$tu"
done
failed=0
if [ $count -gt 0 ] && { [ -z "$only" ] || [ "$only" = fragments ]; }; then
  echo "readme: compiling $count fragment and declaration snippet(s) in one translation unit"
  if ! "$cxx" "${flags[@]}" -fsyntax-only "${extra_flags[@]}" "$tu"; then
    echo "readme: a fragment or declarations snippet does not compile (generated file: $tu)" >&2
    failed=1
  fi
fi

# 3. Programs (compiled, linked, run) and sources (compiled alone).
for code in "${codes[@]}"; do
  name=$(basename "$code" .code)
  kind=$(cat "$work/snippets/$name.kind")
  line=$(cat "$work/snippets/$name.line" 2>/dev/null || echo 1)
  mapfile -t defines <"$work/snippets/$name.defines"
  case "$kind" in program | source) ;; *) continue ;; esac
  if [ -n "$only" ] && [ "$only" != "$name" ]; then
    continue
  fi
  src="$work/$name.cpp"
  {
    echo "#line $line \"$readme\""
    cat "$code"
  } >"$src"
  if [ "$kind" = source ]; then
    echo "readme: compiling source snippet $name"
    if ! "$cxx" "${flags[@]}" "${defines[@]}" -fsyntax-only "$src" "${extra_flags[@]}"; then
      echo "readme: source snippet $name (README line $line) does not compile" >&2
      failed=1
    fi
    continue
  fi
  echo "readme: compiling and running program snippet $name"
  if ! "$cxx" "${flags[@]}" "${defines[@]}" "$src" -o "$work/$name" "${extra_flags[@]}" "${link_flags[@]}"; then
    echo "readme: program snippet $name (README line $line) does not compile" >&2
    failed=1
    continue
  fi
  status=0
  (cd "$work" && timeout 120 "./$name" >"$work/$name.out" 2>"$work/$name.err") || status=$?
  if [ $status -ne 0 ]; then
    echo "readme: program snippet $name (README line $line) exited with status $status; its output:" >&2
    cat "$work/$name.out" "$work/$name.err" >&2
    failed=1
    continue
  fi
  if [ -f "$work/snippets/$name.expected" ]; then
    if ! diff -u --label "README.md: output of $name" --label "what $name printed" \
      "$work/snippets/$name.expected" "$work/$name.out"; then
      echo "readme: program snippet $name (README line $line) does not print what the README shows" >&2
      failed=1
      continue
    fi
  fi
  echo "readme: $name ran as shown"
done
if [ $failed -ne 0 ]; then
  exit 1
fi
echo "readme: every snippet compiles, every program runs"
