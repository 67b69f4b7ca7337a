#!/usr/bin/env python3
"""The Python side of benchmarks/compare: the same workloads as procpool_bench.cpp, run with
multiprocessing.Pool ("py_pool", default chunksize) and concurrent.futures.ProcessPoolExecutor
("py_ppe", its default chunksize of 1), 2 workers each, default start method; "long" also times
Pool.apply_async ("py_pool_async") and ProcessPoolExecutor.submit ("py_ppe_submit").

    python3 py_workloads.py --workload NAME [--smoke]
    python3 py_workloads.py --check

prints one JSON object per line and measurement, in procpool_bench's format. ProcessPoolExecutor
costs ~0.2 ms per item, so a measurement estimated to take longer than MAX_REP_S for a single
repetition is not run but reported as {"skipped": reason}; repetitions of a measurement stop once
BUDGET_S seconds have been spent on it (at least one always runs).
Standard library only.
"""
import argparse
import concurrent.futures
import json
import multiprocessing
import statistics
import sys
import time

WORKERS = 2
MAX_REP_S = 30.0
BUDGET_S = 12.0
MIB = 1 << 20


# ---- the work (module level: both pools pickle functions by name) ----------------------------

def square(x):
    return x * x


def nothing():
    return None


def spin(iters):
    x = iters | 1
    for _ in range(iters):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    return x


def echo(b):
    return b


def spin_iters_per_ms():
    """Iterations of spin() per millisecond: the fastest of several timings."""
    probe = 100_000
    best = min(timed(lambda: spin(probe)) for _ in range(7))
    return probe / (best * 1e3)


# ---- measurement -----------------------------------------------------------------------------

def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def emit(workload, param, impl, samples, items=0, nbytes=0, skipped=None):
    cell = {"workload": workload, "param": param, "impl": impl, "items": items, "bytes": nbytes,
            "samples": samples}
    if skipped:
        cell["skipped"] = skipped
    print(json.dumps(cell), flush=True)


def repeat(fn, reps, estimate_s=None):
    """Up to `reps` timings of fn, stopping once BUDGET_S is spent; None if one rep is estimated
    to take longer than MAX_REP_S."""
    if estimate_s is not None and estimate_s > MAX_REP_S:
        return None
    samples = []
    spent = 0.0
    for _ in range(reps):
        t = timed(fn)
        samples.append(t)
        spent += t
        if spent > BUDGET_S:
            break
    return samples


def interleaved(workload, param, reps, bodies, items=0, nbytes=0):
    """bodies: list of (impl, fn); repetitions interleaved across impls, budget per impl."""
    samples = {impl: [] for impl, _ in bodies}
    spent = {impl: 0.0 for impl, _ in bodies}
    for _ in range(reps):
        for impl, fn in bodies:
            if samples[impl] and spent[impl] > BUDGET_S:
                continue
            t = timed(fn)
            samples[impl].append(t)
            spent[impl] += t
    for impl, _ in bodies:
        emit(workload, param, impl, samples[impl], items, nbytes)


def check(ok, what):
    if not ok:
        sys.exit(f"py_workloads: wrong result: {what}")


# ---- workloads -------------------------------------------------------------------------------

def workload_map(smoke, pool, ppe):
    sizes = [(1_000, 3), (10_000, 3)] if smoke else [(10_000, 31), (100_000, 21), (1_000_000, 11), (10_000_000, 3)]
    per_item = {"py_pool": None, "py_ppe": None}
    for n, reps in sizes:
        xs = list(range(n))
        expect = [x * x for x in xs]
        check(pool.map(square, xs) == expect, "Pool.map")
        for impl, fn in (("py_pool", lambda: pool.map(square, xs)),
                         ("py_ppe", lambda: list(ppe.map(square, xs)))):
            est = per_item[impl] * n if per_item[impl] else None
            samples = repeat(fn, reps, est)
            if samples is None:
                emit("map", n, impl, [], n, skipped=f"one repetition estimated at {est:.0f} s "
                                                   f"(> {MAX_REP_S:.0f} s) from the smaller size")
                continue
            per_item[impl] = statistics.median(samples) / n
            emit("map", n, impl, samples, n)


def workload_submit(smoke, pool, ppe):
    n = 1_000 if smoke else 100_000
    reps = 2 if smoke else 7
    expect = sum(i * i for i in range(n))

    def via_pool():
        rs = [pool.apply_async(square, (i,)) for i in range(n)]
        check(sum(r.get() for r in rs) == expect, "apply_async")

    def via_ppe():
        fs = [ppe.submit(square, i) for i in range(n)]
        check(sum(f.result() for f in fs) == expect, "submit")

    for impl, fn in (("py_pool", via_pool), ("py_ppe", via_ppe)):
        emit("submit", n, impl, repeat(fn, reps), n)


def workload_roundtrip(smoke, pool, ppe):
    n = 200 if smoke else 2_000
    for _ in range(50):
        pool.apply_async(square, (3,)).get()
        ppe.submit(square, 3).result()
    for impl, fn in (("py_pool", lambda i: pool.apply_async(square, (i,)).get()),
                     ("py_ppe", lambda i: ppe.submit(square, i).result())):
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            v = fn(i)
            samples.append(time.perf_counter() - t0)
            check(v == i * i, "round trip")
        emit("roundtrip", n, impl, samples, 1)


def workload_startup(smoke, pool, ppe):
    reps = 3 if smoke else 21

    def with_pool():
        p = multiprocessing.Pool(WORKERS)
        p.close()
        p.join()

    def with_ppe():
        # ProcessPoolExecutor starts its processes at the first submit: one no-op task makes it.
        ex = concurrent.futures.ProcessPoolExecutor(WORKERS)
        ex.submit(nothing).result()
        ex.shutdown(wait=True)

    interleaved("startup", WORKERS, reps, [("py_pool", with_pool), ("py_ppe", with_ppe)])


def workload_balanced(smoke, pool, ppe):
    tasks = 8 if smoke else 64
    ms = 2.0 if smoke else 10.0
    reps = 2 if smoke else 5
    xs = [int(spin_iters_per_ms() * ms)] * tasks
    expect = [spin(x) for x in xs]
    check(pool.map(spin, xs) == expect, "balanced")
    interleaved("balanced", tasks, reps, [
        ("py_pool", lambda: pool.map(spin, xs)),
        ("py_ppe", lambda: list(ppe.map(spin, xs))),
        ("py_sequential", lambda: [spin(x) for x in xs]),
    ], items=tasks)


def workload_skewed(smoke, pool, ppe):
    long_ms, short_ms, shorts = (20.0, 0.02, 100) if smoke else (200.0, 0.2, 1_000)
    reps = 2 if smoke else 5
    rate = spin_iters_per_ms()
    xs = [int(rate * long_ms)] + [int(rate * short_ms)] * shorts
    expect = [spin(x) for x in xs]
    check(list(ppe.map(spin, xs)) == expect, "skewed")
    interleaved("skewed", len(xs), reps, [
        ("py_pool", lambda: pool.map(spin, xs)),
        ("py_ppe", lambda: list(ppe.map(spin, xs))),
        ("py_sequential", lambda: [spin(x) for x in xs]),
        ("py_longest", lambda: spin(xs[0])),
    ], items=len(xs))


def workload_payload(smoke, pool, ppe):
    items = 16 if smoke else 256
    reps = 2 if smoke else 5
    xs = [bytes([i % 256]) * MIB for i in range(items)]
    check(pool.map(echo, xs) == xs, "payload")
    interleaved("payload", items, reps, [
        ("py_pool", lambda: pool.map(echo, xs)),
        ("py_ppe", lambda: list(ppe.map(echo, xs))),
    ], items=items, nbytes=2 * items * MIB)


def workload_long(smoke, pool, ppe):
    """n long items, n = workers and workers + 1: makespan against ceil(n / workers) items."""
    ms = 20.0 if smoke else 200.0
    reps = 1 if smoke else 3
    iters = int(spin_iters_per_ms() * ms)
    for n in (WORKERS, WORKERS + 1):
        xs = [iters] * n
        expect = [spin(x) for x in xs]

        def via_apply_async():
            rs = [pool.apply_async(spin, (x,)) for x in xs]
            check([r.get() for r in rs] == expect, "long apply_async")

        def via_ppe_submit():
            fs = [ppe.submit(spin, x) for x in xs]
            check([f.result() for f in fs] == expect, "long submit")

        interleaved("long", n, reps, [
            ("py_pool", lambda: check(pool.map(spin, xs) == expect, "long Pool.map")),
            ("py_pool_async", via_apply_async),
            ("py_ppe", lambda: check(list(ppe.map(spin, xs)) == expect, "long PPE.map")),
            ("py_ppe_submit", via_ppe_submit),
            ("py_sequential", lambda: [spin(x) for x in xs]),
            ("py_longest", lambda: spin(xs[0])),
        ], items=n)


WORKLOADS = {
    "map": workload_map, "submit": workload_submit, "roundtrip": workload_roundtrip,
    "startup": workload_startup, "balanced": workload_balanced, "skewed": workload_skewed,
    "payload": workload_payload, "long": workload_long,
}


def self_check():
    """Fails (non-zero exit, message on stderr) unless both process pools work here."""
    with multiprocessing.Pool(WORKERS) as pool:
        if pool.map(square, range(10)) != [x * x for x in range(10)]:
            raise RuntimeError("multiprocessing.Pool.map returned wrong results")
    with concurrent.futures.ProcessPoolExecutor(WORKERS) as ex:
        if list(ex.map(square, range(10))) != [x * x for x in range(10)]:
            raise RuntimeError("ProcessPoolExecutor.map returned wrong results")
    print(json.dumps({"python": sys.version.split()[0],
                      "start_method": multiprocessing.get_start_method()}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=sorted(WORKLOADS))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    if args.check:
        self_check()
        return
    if not args.workload:
        ap.error("--workload or --check is required")
    # Pools created before the inputs exist, as procpool_bench does; the startup workload makes
    # its own.
    pool = multiprocessing.Pool(WORKERS)
    ppe = concurrent.futures.ProcessPoolExecutor(WORKERS)
    try:
        ppe.submit(nothing).result()
        pool.apply_async(nothing).get()
        WORKLOADS[args.workload](args.smoke, pool, ppe)
    finally:
        pool.close()
        pool.join()
        ppe.shutdown(wait=True)


if __name__ == "__main__":
    main()
