"""What `torch.compile` buys, in one run: compile time, and compiled speed against eager and against stock
transformers compiled, same weights, printed as ratios.

    PYTHONPATH=. python benchmarks/bench_compile.py [--variants xx-small mobilevitv2-0.5] [--batch-sizes 1 32]
        [--threads 2] [--image-size 256] [--repeats 20] [--fast-path-compiled] [--training-batch 32]

Inference (eval, inference mode), per variant and batch size, candidates timed interleaved in one process
(`mobilevit.benchmark`: realistic weights, tuned allocator, a lead-in call before each timed one):

- mobilevit eager: this package's default eval path, the fast path (folded BatchNorm, fused oneDNN convolutions);
- mobilevit compiled: `torch.compile(model, fullgraph=True, dynamic=False)`, Inductor's defaults. Under
  compilation the fast path hands over to the plain path, which Inductor compiles as one graph;
- mobilevit compiled+freezing: the same with Inductor's `freezing` option (weights as constants: Inductor folds
  BatchNorm and prepacks oneDNN weights itself, what the fast path does by hand);
- with --fast-path-compiled, the alternative not taken: Dynamo tracing the fast path itself (`fullgraph=False`;
  its cached oneDNN-packed weights and per-layer Python make it break into dozens of graphs);
- transformers eager, transformers compiled, transformers compiled+freezing: stock, same weights.

Each compiled candidate's first call at a batch size compiles; it is timed apart ("compile s") and never in the
medians. Every compiled output is compared with mobilevit eager's ("max |diff|").

Training (--training-batch N, 0 to skip): one step (forward, backward, SGD; train mode), mobilevit and stock,
eager and compiled (`dynamic=False`, as `mobilevit train --compile` runs), at the base image size.

The machine's load is printed: on a shared machine absolute times drift, the ratios are what to read.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from mobilevit import benchmark as bench
from mobilevit import fast_inference

FREEZING = {"freezing": True}


class _FastPathWhileCompiling:
    """For the --fast-path-compiled candidate's calls only: `fast_inference.applies` without its hand-over under
    compilation (eval, inference mode: the fast path applies), so Dynamo traces the fast path itself."""

    def __enter__(self):
        self._original = fast_inference.applies
        fast_inference.applies = lambda model, pixel_values: (
            fast_inference.is_enabled(model) and not fast_inference._any_in_training_mode(model))

    def __exit__(self, *exc_info):
        fast_inference.applies = self._original


def _with_fast_path(runner):
    def run(pixel_values):
        with _FastPathWhileCompiling():
            return runner(pixel_values)

    run.compile_s = runner.compile_s
    return run


def inference_candidates(model, fast_path_compiled: bool) -> dict:
    stock = bench.build_stock(model)
    runners = {
        "mobilevit eager": bench.torch_runner(model),
        "mobilevit compiled": bench.CompiledRunner(model),
        "mobilevit compiled+freezing": bench.CompiledRunner(model, options=FREEZING),
        "transformers eager": bench.torch_runner(stock),
        "transformers compiled": bench.CompiledRunner(stock),
        "transformers compiled+freezing": bench.CompiledRunner(stock, options=FREEZING),
    }
    if fast_path_compiled:
        runners["mobilevit compiled fast path"] = _with_fast_path(bench.CompiledRunner(model, fullgraph=False))
    return runners


def _max_diff(runners: dict, pixel_values: torch.Tensor) -> dict[str, float]:
    want = runners["mobilevit eager"](pixel_values).logits
    return {name: (run(pixel_values).logits - want).abs().max().item() for name, run in runners.items()
            if name != "mobilevit eager"}


def _table(times: dict, compile_s: dict, diffs: dict) -> str:
    references = ("mobilevit eager", "transformers eager", "transformers compiled")
    ratios = {ref: bench.summarise(times, ref) for ref in references}
    lines = ["| candidate | median ms (p10-p90) | vs mobilevit eager | vs transformers eager | "
             "vs transformers compiled | compile s | max abs diff |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in times:
        s = ratios[references[0]][name]
        speedups = " | ".join(f"{ratios[ref][name]['speedup']:.2f}x" for ref in references)
        seconds = f"{compile_s[name]:.1f}" if name in compile_s else ""
        diff = f"{diffs[name]:.1e}" if name in diffs else ""
        lines.append(f"| {name} | {s['median_ms']:.1f} ({s['p10_ms']:.1f}-{s['p90_ms']:.1f}) | {speedups} | "
                     f"{seconds} | {diff} |")
    return "\n".join(lines)


def bench_inference(variant: str, batch_sizes, image_size: int, repeats: int, warmup: int,
                    fast_path_compiled: bool) -> None:
    model = bench.build_mobilevit(variant, "image-classification")
    runners = inference_candidates(model, fast_path_compiled)
    for batch in batch_sizes:
        pixel_values = bench.benchmark_input(batch, image_size)
        times = bench.time_interleaved(runners, lambda name: pixel_values, repeats, warmup, lead_in=True)
        compile_s = {name: run.compile_s[batch] for name, run in runners.items() if hasattr(run, "compile_s")}
        print(f"\n{variant}, inference, batch {batch}, {image_size}x{image_size}; {bench.machine_load()}")
        print(_table(times, compile_s, _max_diff(runners, pixel_values)))


def _stepper(model, labels, compiled: bool):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    forward = model
    if compiled:
        forward = torch.compile(model, fullgraph=True, dynamic=False, backend=bench.COMPILE_BACKEND,
                                isolate_recompiles=True)
    state = {}

    def step(pixel_values):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        forward(pixel_values, labels=labels).loss.backward()
        optimizer.step()
        state.setdefault("first_s", time.perf_counter() - start)  # compiled: the step that compiles

    step.state = state
    return step


def bench_training(variant: str, batch: int, image_size: int, repeats: int) -> None:
    ours = bench.build_mobilevit(variant, "image-classification").train()
    ours.config.problem_type = "single_label_classification"  # as `mobilevit train` (no recompile after step 1)
    stock = bench.build_stock(ours).train()
    stock.config.problem_type = ours.config.problem_type
    labels = torch.randint(0, 1000, (batch,))
    models = {"mobilevit": ours, "transformers": stock}
    steppers = {}
    for name, model in models.items():
        steppers[f"{name} eager"] = _stepper(copy.deepcopy(model), labels, compiled=False)
        steppers[f"{name} compiled"] = _stepper(copy.deepcopy(model), labels, compiled=True)
    pixel_values = torch.rand(batch, 3, image_size, image_size)
    times = bench.time_interleaved(steppers, lambda name: pixel_values, repeats, warmup=2)
    compile_s = {name: run.state["first_s"] for name, run in steppers.items() if "compiled" in name}
    references = ("mobilevit eager", "transformers eager", "transformers compiled")
    ratios = {ref: bench.summarise(times, ref) for ref in references}
    print(f"\n{variant}, training step (forward, backward, SGD), batch {batch}, {image_size}x{image_size}; "
          f"{bench.machine_load()}")
    print("| candidate | median ms (p10-p90) | vs mobilevit eager | vs transformers eager | vs transformers compiled "
          "| first step s (compiled: compiling) |\n|---|---:|---:|---:|---:|---:|")
    for name in times:
        s = ratios[references[0]][name]
        speedups = " | ".join(f"{ratios[ref][name]['speedup']:.2f}x" for ref in references)
        first = f"{compile_s[name]:.1f}" if name in compile_s else ""
        print(f"| {name} | {s['median_ms']:.0f} ({s['p10_ms']:.0f}-{s['p90_ms']:.0f}) | {speedups} | {first} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["xx-small", "mobilevitv2-0.5"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: leave torch's setting)")
    parser.add_argument("--allocator", choices=bench.IN_PROCESS_ALLOCATORS, default="tuned",
                        help="glibc malloc tuned to keep freed memory (default) or as the process has it")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per candidate (after compiling)")
    parser.add_argument("--fast-path-compiled", action="store_true",
                        help="also time Dynamo tracing the fast path itself (the design not taken)")
    parser.add_argument("--training-batch", type=int, default=32, help="training step batch size (0: skip)")
    parser.add_argument("--training-repeats", type=int, default=8)
    args = parser.parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    settings = bench.check_settings(variants=args.variants, batch_sizes=args.batch_sizes, threads=threads,
                                    task="image-classification", image_size=args.image_size, repeats=args.repeats,
                                    warmup=args.warmup, candidates=["mobilevit-compiled"], allocator=args.allocator)
    torch.set_num_threads(threads)
    if args.allocator == "tuned":
        bench.tune_allocator()
    print(f"torch {torch.__version__}, {threads} threads, {args.allocator} allocator; {bench.machine_load()}")
    for variant in settings["variants"]:
        bench_inference(variant, settings["batch_sizes"], settings["image_size"], settings["repeats"],
                        settings["warmup"], args.fast_path_compiled)
        if args.training_batch > 0:
            bench_training(variant, args.training_batch, settings["image_size"], args.training_repeats)
    print(f"\nend; {bench.machine_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
