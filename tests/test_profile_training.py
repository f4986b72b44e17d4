"""benchmarks/profile_training.py charges each operator of a training step to its phase, for this package and
stock transformers, and refuses what it cannot measure. Never asserts on time."""

import re

import pytest


@pytest.fixture(scope="module")
def profiler_script(load_benchmark_script):
    return load_benchmark_script("profile_training")


def test_each_phase_lists_its_own_operators(profiler_script, capsys):
    # --threads 0 keeps torch's thread count; "default" leaves the test process's malloc as it is
    assert profiler_script.main(["--models", "xx-small:semantic-segmentation", "--batch", "2", "--image-size", "64",
                                 "--rounds", "1", "--threads", "0", "--allocator", "default"]) == 0
    printed = capsys.readouterr().out
    for candidate in ("mobilevit", "transformers"):
        section = printed.split(f"## {candidate}: xx-small semantic-segmentation, batch 2, 64x64", 1)[1]
        section = section.split("\n## ", 1)[0]
        phases = dict(re.findall(r"(forward|backward|clip|optimizer) (\d+) ms \(", section))
        assert set(phases) == {"forward", "backward", "clip", "optimizer"}
        tables = dict(re.findall(r"\n(forward|backward|clip|optimizer) +ms/step +share +calls\n(.*?)(?=\n\n|\Z)",
                                 section, flags=re.S))
        assert "convolution" in tables["forward"] and "convolution_backward" in tables["backward"]
        assert "convolution_backward" not in tables["forward"] and "adamw" in tables["optimizer"].lower()
    # this package's loss upsamples with matrix products; stock's with the bilinear kernel
    assert "upsample_bilinear2d" in printed.split("## transformers", 1)[1]


@pytest.mark.parametrize("bad", [["--batch", "0"], ["--rounds", "0"], ["--image-size", "16"], ["--threads", "-1"],
                                 ["--models", "huge"]])
def test_bad_arguments_are_refused(profiler_script, bad, capsys):
    with pytest.raises(SystemExit):
        profiler_script.main(["--threads", "0", "--allocator", "default", *bad])
    error = capsys.readouterr().err
    assert bad[0] in error and "expected" in error
