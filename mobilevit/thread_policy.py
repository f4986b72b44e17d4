"""How many threads a fast-path forward uses when other processes want the same CPUs.

PyTorch's CPU kernels split each operator over an OpenMP team and wait at a barrier at its end; a MobileViT
forward has a few hundred of them. When another process holds one of the team's CPUs, the operator waits for
the descheduled thread's next time slice, at every barrier: on a busy 2-core machine a 12 ms forward took
0.5-2 s with 2 threads, where ONNX Runtime (its own thread pool) took 30-110 ms. One thread has no barriers
and degrades only by its share of the CPU.

So the fast path watches what it gets (`ThreadPolicy`): after each forward, the CPU time the process used
against the wall time times the threads it asked for. Two forwards in a row that got under `MIN_CPU_SHARE` of
their CPUs switch the following forwards to one thread; while on one thread, each forward looks at the
kernel's count of runnable tasks (`/proc/loadavg`) and the threads come back as soon as enough CPUs are idle
for them, or at the latest after `RETRY_AFTER_S` (a probe, which drops back if still contended). On an idle
machine a forward gets all of its CPUs and nothing changes. torch's thread setting is set for one forward and
restored after it: the user's `torch.set_num_threads` stays what it was.

`MOBILEVIT_THREAD_POLICY=0` in the environment switches this off (read at every forward).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import torch

from .limits import usable_cpus

ENV_SWITCH = "MOBILEVIT_THREAD_POLICY"
MIN_CPU_SHARE = 0.8  # of the CPUs a forward asked for; measured: idle 0.85-1.0, one busy process beside 0.52-0.74
LOW_SHARE_CALLS = 2  # forwards in a row under MIN_CPU_SHARE before dropping to one thread
MIN_MEASURED_S = 0.003  # shorter forwards say too little (thread wake-up dominates)
RETRY_AFTER_S = 2.0


def _runnable_tasks() -> int | None:
    """Tasks the kernel has runnable right now, this thread included (None where /proc is not there)."""
    try:
        with open("/proc/loadavg", "rb") as stats:
            return int(stats.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None


class ThreadPolicy:
    """The process's one policy (threads are a process-wide setting): `with POLICY.forward(): ...`."""

    def __init__(self):
        self._lock = threading.Lock()
        self.single_thread = False  # contended: forwards run on one thread
        self._low_share_calls = 0
        self._since = 0.0  # when single_thread was set

    def _threads_for_this_call(self, requested: int) -> int:
        if not self.single_thread:
            return requested
        runnable = _runnable_tasks()
        # runnable counts this thread; the other `requested - 1` threads need that many idle CPUs
        idle_enough = runnable is not None and runnable - 1 + requested <= usable_cpus()
        if idle_enough or time.monotonic() - self._since > RETRY_AFTER_S:
            # a probe on a still-busy machine goes back to one thread after one slow forward, not two
            self.single_thread, self._low_share_calls = False, 0 if idle_enough else LOW_SHARE_CALLS - 1
            return requested
        return 1

    def _record(self, threads: int, wall: float, cpu: float) -> None:
        if threads < 2 or wall < MIN_MEASURED_S:
            return
        if cpu / (wall * min(threads, usable_cpus())) < MIN_CPU_SHARE:  # more threads than CPUs: not contention
            self._low_share_calls += 1
            if self._low_share_calls >= LOW_SHARE_CALLS:
                self.single_thread, self._since = True, time.monotonic()
        else:
            self._low_share_calls = 0

    @contextlib.contextmanager
    def forward(self):
        requested = torch.get_num_threads()
        if requested < 2 or os.environ.get(ENV_SWITCH, "1") == "0" or not self._lock.acquire(blocking=False):
            yield  # one thread already, switched off, or another Python thread's forward is running: hands off
            return
        try:
            threads = self._threads_for_this_call(requested)
            if threads != requested:
                torch.set_num_threads(threads)
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                yield
            finally:
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if threads != requested:
                    torch.set_num_threads(requested)
            self._record(threads, wall, cpu)
        finally:
            self._lock.release()


POLICY = ThreadPolicy()

__all__ = ["POLICY", "ThreadPolicy", "ENV_SWITCH"]
