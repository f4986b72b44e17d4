"""benchmarks/channel_order_effect.py runs end to end (a two-step training) and saves its chart."""

import pytest


def test_the_channel_order_effect_is_measured_and_charted(load_benchmark_script, tmp_path, capsys):
    bench = load_benchmark_script("channel_order_effect")
    chart = tmp_path / "effect.png"
    # --threads 0 keeps torch's thread count: the test must not change it for the rest of the session
    assert bench.main(["--steps", "2", "--threads", "0", "--output", str(chart)]) == 0
    printed = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}
    assert "trained here" in rows and "held-out 64x64 crops" in rows["trained here"]
    if bench.shared_fixtures_dir("mlcvnets_v2") is not None:
        fixture = rows["fixture weights"].split("|")
        assert float(fixture[2]) > 0.1  # the same photos in BGR move the fixture model's logits
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):  # an existing chart is kept unless --overwrite
        bench.main(["--steps", "2", "--threads", "0", "--output", str(chart)])
    assert "exists" in capsys.readouterr().err
