#!/usr/bin/env bash
# Runs one MPI test and checks what it leaves behind.
#   run_under_mpirun.sh EXPECT PATTERN -- COMMAND...
# EXPECT: "pass" (COMMAND must exit 0) or "fail" (it must exit non-zero). PATTERN: extended
# regular expressions, separated by |||, each of which a line of its output must match ("" for none);
# one that starts with ! must match no line. Every process the command starts carries
# PROCPOOL_MPI_TEST_MARKER in its environment (mpirun is given it with -x); after the command
# ends, no process may still carry it (ranks, zygotes and workers alike), within 10 seconds.
set -uo pipefail
expect="$1" pattern="$2"
shift 3
marker="procpool-mpi-test-$$-$RANDOM"
output="$(mktemp)"
trap 'rm -f "$output"' EXIT
PROCPOOL_MPI_TEST_MARKER="$marker" "$@" >"$output" 2>&1
rc=$?
cat "$output"
status=0
if [[ "$expect" == pass && $rc -ne 0 ]]; then
  echo "run_under_mpirun: the command failed (exit $rc)"
  status=1
elif [[ "$expect" == fail && $rc -eq 0 ]]; then
  echo "run_under_mpirun: the command should have failed, and exited 0"
  status=1
fi
if [[ -n "$pattern" ]]; then
  while IFS= read -r one; do
    if [[ "$one" == '!'* ]]; then
      if grep -Eq -- "${one#!}" "$output"; then
        echo "run_under_mpirun: the output should not match, and does: ${one#!}"
        status=1
      fi
    elif ! grep -Eq -- "$one" "$output"; then
      echo "run_under_mpirun: the output does not match: $one"
      status=1
    fi
  done < <(printf '%s\n' "${pattern//|||/$'\n'}")
fi
left=""
for _ in $(seq 100); do
  left=""
  for env in /proc/[0-9]*/environ; do
    pid="${env#/proc/}" pid="${pid%/environ}"
    [[ "$pid" == "$$" ]] && continue
    if { tr '\0' '\n' <"$env"; } 2>/dev/null | grep -qx "PROCPOOL_MPI_TEST_MARKER=$marker"; then
      left+=" $pid($({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null))"
    fi
  done
  [[ -z "$left" ]] && break
  sleep 0.1
done
if [[ -n "$left" ]]; then
  echo "run_under_mpirun: processes left running after the job:$left"
  status=1
fi
exit $status
