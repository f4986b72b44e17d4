"""benchmarks/bench_detection_postprocessing.py runs end to end and prints its table (never asserts on time)."""

import pytest


@pytest.mark.slow  # a detector at 320x320, timed (20 s on a busy 2-core machine)
def test_prints_the_share_of_the_forward(load_benchmark_script, capsys):
    bench = load_benchmark_script("bench_detection_postprocessing")
    assert bench.main(["--variants", "xx-small", "--repeats", "1", "--threads", "0"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| xx-small |")]
    cases = {line.split("|")[2].strip() for line in table}
    assert "model" in cases
    for line in table:
        candidates, detections = (int(cell) for cell in line.split("|")[3:5])
        assert 0 <= detections <= candidates
        assert line.rstrip(" |").endswith("%")


def test_bad_repeats(load_benchmark_script):
    bench = load_benchmark_script("bench_detection_postprocessing")
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "0"])
