"""How long the command line takes to answer help and usage errors, this tree against another checkout of the
package (the goal: under 1 s; before the lazy imports, torch and transformers loaded before arguments were read).

    PYTHONPATH=. python benchmarks/bench_cli_start.py --against /work/main --rounds 5

Each command runs in a fresh `python -m mobilevit` process in the tree's folder, with the tree on PYTHONPATH
(its output discarded, its exit code checked); trees alternate command by command, in reversed order every other round, and the medians of
the wall times are printed with their ratio and the machine's load before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {  # what is timed: (arguments, exit code)
    "mobilevit --help": (["--help"], 0),
    "mobilevit train --help": (["train", "--help"], 0),
    "mobilevit predict --help": (["predict", "--help"], 0),
    "mobilevit benchmark --help": (["benchmark", "--help"], 0),
    "predict usage error (--top-k 0)": (["predict", "photo.jpg", "--model", "m", "--top-k", "0"], 2),
    "train usage error (--epochs ten)": (["train", "--epochs", "ten", "--data", "d", "--output-dir", "o"], 2),
}


def machine_load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min) on {os.cpu_count()} CPUs"


def start_time(tree: Path, argv: list[str], expected: int) -> float:
    """Seconds from starting `python -m mobilevit ARGV` in `tree` (`-m` puts the working folder first on the path,
    before PYTHONPATH) to its exit; the command's own exit code is checked against `expected`."""
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "mobilevit", *argv], env=environment, cwd=tree,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if completed.returncode != expected:
        raise RuntimeError(f"{tree}: mobilevit {' '.join(argv)} exited with {completed.returncode}, expected "
                           f"{expected}: {completed.stderr.strip()[-500:]}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout to time (default: this one)")
    parser.add_argument("--against", type=Path, default=None, help="another checkout, timed interleaved")
    parser.add_argument("--rounds", type=int, default=5, help="runs of every command per tree (default 5)")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 100:
        parser.error(f"--rounds: expected an integer from 1 to 100, got {args.rounds}")
    trees = {"this tree": args.tree, **({"against": args.against} if args.against else {})}
    for name, tree in trees.items():
        if not (tree / "mobilevit" / "cli.py").is_file():
            parser.error(f"--{'tree' if name == 'this tree' else 'against'}: expected a checkout of mobilevit, got "
                         f"{str(tree)!r}")
    print(f"before: {machine_load()}")
    times = {(name, command): [] for name in trees for command in COMMANDS}
    for round_index in range(args.rounds):
        for command, (command_argv, expected) in COMMANDS.items():
            order = list(trees) if round_index % 2 == 0 else list(reversed(trees))
            for name in order:
                times[name, command].append(start_time(trees[name], command_argv, expected))
    print(f"\nmedian seconds of {args.rounds} runs, python -m mobilevit ...\n")
    header = "| command | " + " | ".join(f"{name} ({trees[name]})" for name in trees) + \
        (" | against / this tree |" if len(trees) > 1 else " |")
    print(header)
    print("|---|" + "---:|" * (len(trees) + (len(trees) > 1)))
    for command in COMMANDS:
        medians = [statistics.median(times[name, command]) for name in trees]
        ratio = f" | {medians[1] / medians[0]:.1f}x" if len(medians) > 1 else ""
        print(f"| {command} | " + " | ".join(f"{m:.2f}" for m in medians) + ratio + " |")
    print(f"\nafter: {machine_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
