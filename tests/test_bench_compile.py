"""benchmarks/bench_compile.py runs end to end (Dynamo's cheap "eager" backend, a tiny size): the inference
candidates, compile times apart, outputs compared; never asserts on time. (Its --fast-path-compiled and training
sections would add 40 s of tracing here; they ran for docs/compile.md's numbers.)"""

import sys

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_benchmark_script):
    return load_benchmark_script("bench_compile")


def test_every_candidate_is_timed_and_compared(bench, capsys, monkeypatch):
    from mobilevit import benchmark

    monkeypatch.setattr(benchmark, "COMPILE_BACKEND", "eager")
    monkeypatch.setitem(sys.modules, "bench_compile", bench)  # Dynamo looks traced functions' modules up by name
    torch._dynamo.reset()
    try:
        # --threads 0 and --allocator default: the test process keeps its settings
        assert bench.main(["--variants", "xx-small", "--batch-sizes", "1", "--image-size", "64", "--repeats", "2",
                           "--warmup", "0", "--threads", "0", "--allocator", "default", "--training-batch", "0"]) == 0
    finally:
        torch._dynamo.reset()
    printed = capsys.readouterr().out
    for name in ("mobilevit compiled", "mobilevit compiled+freezing", "transformers compiled",
                 "transformers compiled+freezing"):
        row = next(line for line in printed.splitlines() if line.startswith(f"| {name} |"))
        *_, compile_s, diff, _ = row.split("|")
        assert float(compile_s) > 0 and float(diff) <= 1e-4, row
    assert "xx-small, inference, batch 1, 64x64" in printed and "| mobilevit eager |" in printed
