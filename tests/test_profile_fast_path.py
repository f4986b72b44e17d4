"""benchmarks/profile_fast_path.py profiles a forward end to end and refuses sizes it cannot measure."""

import re

import pytest


@pytest.fixture(scope="module")
def profiler_script(load_benchmark_script):
    return load_benchmark_script("profile_fast_path")


def test_report_lists_operators_fixed_cost_and_silu(profiler_script, capsys):
    # --threads 0 keeps torch's thread count for the rest of the session
    assert profiler_script.main(["--variants", "xx-small", "--image-size", "64", "--rounds", "2", "--threads", "0"]) == 0
    printed = capsys.readouterr().out
    assert "## xx-small, batch 1, 64x64" in printed
    table = printed.split("ms/forward", 1)[1].split("(all operators", 1)[0]
    assert "convolution" in table and "addmm" in table  # the fast path's two big kernels were seen
    total = float(re.search(r"\(all operators, profiled\)\s+([\d.]+)", printed).group(1))
    fixed, full = map(float, re.search(r"fixed cost: ([\d.]+) ms at 32x32 against ([\d.]+) ms at 64x64", printed).groups())
    assert total > 0 and fixed > 0 and full > 0
    # xx-small's widest map at 64x64: layer_1's expansion, 32 channels at 32x32
    assert "SiLU on the widest map (0.03 M elements)" in printed


@pytest.mark.parametrize("bad", [["--image-size", "16"], ["--rounds", "0"], ["--threads", "-1"]])
def test_bad_arguments_are_refused(profiler_script, bad, capsys):
    with pytest.raises(SystemExit):
        profiler_script.main(["--variants", "xx-small", "--threads", "0", *bad])  # the last --threads wins
    error = capsys.readouterr().err
    assert bad[0] in error and "expected" in error
