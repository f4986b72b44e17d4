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

Training runs each step (forward and backward) under the same policy (`POLICY.work("training step", ...)`,
`MobileViTTrainer`): all the threads asked for while the machine is idle, one while it is contended. Three
things differ for such long units of work:
- the decision stays set after the step (`restore=False`): what runs until the next step (loading and
  augmenting the next batch, the optimizer, logging, evaluation) runs on the same threads. Run with two
  threads between one-thread steps on a loaded 2-core machine, that work took 100x the CPU time it takes on
  one, at every barrier;
- one step under `MIN_CPU_SHARE` is enough to drop to one thread (a second of measurement says more than
  two 5 ms forwards), and the threads come back only when every one of `IDLE_SAMPLES` looks at the runnable
  count, a few milliseconds apart, finds the CPUs free (one look is a snapshot; a contended step costs
  20-30x an uncontended one);
- a probe costs a whole step at the contended speed, so a unit is probed no sooner than
  `RETRY_AFTER_UNITS` times its own one-thread duration: every 2 s for 12 ms forwards, every few minutes for
  1 s training steps.

`MOBILEVIT_THREAD_POLICY=0` in the environment switches this off (read at every forward).
"""

from __future__ import annotations

import collections
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
RETRY_AFTER_UNITS = 200  # ... and no sooner than this many one-thread durations of the unit probed
LONG_UNIT_S = 0.1  # units at least this long: one low share drops them, IDLE_SAMPLES looks bring them back
IDLE_SAMPLES = 5
IDLE_SAMPLE_GAP_S = 0.002


def _runnable_tasks() -> int | None:
    """Tasks the kernel has runnable right now, this thread included (None where /proc is not there)."""
    try:
        with open("/proc/loadavg", "rb") as stats:
            return int(stats.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None


def _idle_enough(requested: int, samples: int) -> bool:
    """Whether `samples` looks at the runnable count (IDLE_SAMPLE_GAP_S apart) all find idle CPUs for the other
    `requested - 1` threads (the count includes this thread)."""
    for sample in range(samples):
        if sample:
            time.sleep(IDLE_SAMPLE_GAP_S)
        runnable = _runnable_tasks()
        if runnable is None or runnable - 1 + requested > usable_cpus():
            return False
    return True


class ThreadPolicy:
    """The process's one policy (threads are a process-wide setting): `with POLICY.forward(): ...` or
    `with POLICY.work("training step"): ...`."""

    def __init__(self):
        self._lock = threading.Lock()
        self.single_thread = False  # contended: forwards run on one thread
        self._low_share_calls = 0
        self._since = 0.0  # when single_thread was set
        self._one_thread_s: dict[str, float] = {}  # unit -> wall time of its last one-thread run
        self.counts: collections.Counter = collections.Counter()  # (unit, threads) -> runs, for reports

    def _threads_for_this_call(self, requested: int, unit: str) -> int:
        if not self.single_thread:
            return requested
        one_thread_s = self._one_thread_s.get(unit, 0.0)
        idle_enough = _idle_enough(requested, samples=IDLE_SAMPLES if one_thread_s >= LONG_UNIT_S else 1)
        retry_after = max(RETRY_AFTER_S, RETRY_AFTER_UNITS * one_thread_s)
        if idle_enough or time.monotonic() - self._since > retry_after:
            # a probe on a still-busy machine goes back to one thread after one slow forward, not two
            self.single_thread, self._low_share_calls = False, 0 if idle_enough else LOW_SHARE_CALLS - 1
            return requested
        return 1

    def _record(self, threads: int, wall: float, cpu: float, unit: str) -> None:
        self.counts[unit, threads] += 1
        if threads == 1:
            self._one_thread_s[unit] = wall
        if threads < 2 or wall < MIN_MEASURED_S:
            return
        if cpu / (wall * min(threads, usable_cpus())) < MIN_CPU_SHARE:  # more threads than CPUs: not contention
            self._low_share_calls += 1
            if self._low_share_calls >= (1 if wall >= LONG_UNIT_S else LOW_SHARE_CALLS):
                self.single_thread, self._since = True, time.monotonic()
        else:
            self._low_share_calls = 0

    def forward(self):
        """`with POLICY.forward(): ...`: one model forward."""
        return self.work("forward")

    @contextlib.contextmanager
    def work(self, unit: str, requested: int | None = None, restore: bool = True):
        """`with POLICY.work(unit): ...`: a unit of CPU work (a forward, a training step) under the policy.
        `requested`: the threads for an idle machine (default: torch's setting); `restore=False` leaves torch
        on the threads the policy chose (after this unit's measurement), for whatever runs until the next unit
        (a training loop's batches, optimizer and evaluation; the caller restores its setting at the end)."""
        current = torch.get_num_threads()
        requested = current if requested is None else requested
        if requested < 2 or os.environ.get(ENV_SWITCH, "1") == "0" or not self._lock.acquire(blocking=False):
            yield  # one thread asked for, switched off, or another Python thread's forward is running: hands off
            return
        try:
            threads = self._threads_for_this_call(requested, unit)
            if threads != current:
                torch.set_num_threads(threads)
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                yield
            finally:
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if restore and threads != current:
                    torch.set_num_threads(current)
            self._record(threads, wall, cpu, unit)
            if not restore and self.single_thread and threads > 1:
                torch.set_num_threads(1)  # this unit found the CPUs taken: what follows it runs on one thread
        finally:
            self._lock.release()


POLICY = ThreadPolicy()

__all__ = ["POLICY", "ThreadPolicy", "ENV_SWITCH"]
