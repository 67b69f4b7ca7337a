"""mpi4py.futures' side of benchmarks/compare_mpi: the workloads of benchmarks/mpi_bench.cpp, run as
    mpirun -n 3 /usr/bin/python3 -m mpi4py.futures benchmarks/mpi4py_bench.py [--smoke]
(rank 0 runs this script, ranks 1 and 2 serve). One JSON object per line on stdout, as mpi_bench.
map is timed at several chunksizes (its best is what compare_mpi reports) and at the default
chunksize of 1 on fewer items (it is slow there)."""
import json
import statistics
import sys
import time

from mpi4py.futures import MPIPoolExecutor


def square(x):
    return x * x


def echo(b):
    return b


def emit(impl, workload, param, samples, unit, **extra):
    print(json.dumps(dict(impl=impl, workload=workload, param=param, samples=samples, unit=unit, **extra)), flush=True)


def main():
    smoke = "--smoke" in sys.argv
    with MPIPoolExecutor() as ex:
        n = 10_000 if smoke else 1_000_000
        items = [i % 1000 for i in range(n)]
        for chunksize in ([1000] if smoke else [1000, 10_000, 100_000]):
            list(ex.map(square, items[:1000], chunksize=chunksize))
            samples = []
            for _ in range(2 if smoke else 3):
                t0 = time.perf_counter()
                out = list(ex.map(square, items, chunksize=chunksize))
                samples.append(time.perf_counter() - t0)
                assert out[-1] == items[-1] ** 2
            emit("mpi4py", "map", n, samples, "s", chunksize=chunksize)
        small = 200 if smoke else 5000
        t0 = time.perf_counter()
        list(ex.map(square, range(small)))
        emit("mpi4py", "map_chunksize_1", small, [time.perf_counter() - t0], "s", chunksize=1)
        samples = []
        for i in range(50 if smoke else 1000):
            t0 = time.perf_counter()
            assert ex.submit(square, i).result() == i * i
            samples.append((time.perf_counter() - t0) * 1e6)
        emit("mpi4py", "roundtrip", 1, samples, "us")
        count = 4 if smoke else 64
        payload = [b"x" * (1 << 20)] * count
        list(ex.map(echo, payload))
        samples = []
        for _ in range(2 if smoke else 5):
            t0 = time.perf_counter()
            out = list(ex.map(echo, payload))
            samples.append(time.perf_counter() - t0)
            assert len(out[-1]) == 1 << 20
        emit("mpi4py", "payload", count, samples, "s")


if __name__ == "__main__":
    main()
