"""Loaded by pytest before the conftests of tests/ and parity/, hence before anything imports torch or TensorFlow.

Under pytest-xdist (``make test``, ``make check``, the release's gate suite: ``-n 2``) every worker would start
torch's OpenMP pool and TensorFlow's intra-op pool at one thread per core: two workers on two cores ran four
busy threads, and the spinning of the idle ones cost make test about a quarter of its time (127-133 s, 98 s
with one thread per worker, same machine, same hour). Each worker gets its share of the cores instead; a
variable the user set is kept. A single pytest process is left as it is.
"""
import os


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def share_cores(environ, cores: int, workers: int) -> None:
    """Sets each thread count the user left unset to this worker's share of ``cores`` (one worker: nothing)."""
    if workers > 1:
        for var in THREAD_VARIABLES:
            environ.setdefault(var, str(max(1, cores // workers)))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))   # what this process may use (a container's or taskset's limit)
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


# xdist sets the worker count before it loads any conftest
share_cores(os.environ, _cores(), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0))
