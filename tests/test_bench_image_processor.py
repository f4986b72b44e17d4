"""benchmarks/bench_image_processor.py runs end to end on a few photos and keeps existing charts."""

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark_script):
    return load_benchmark_script("bench_image_processor")


def test_sample_photos_are_distinct_real_photos(bench):
    photos = bench.sample_photos(64)
    assert len(photos) == 64 and all(p.mode == "RGB" for p in photos)
    assert len({p.tobytes() for p in photos}) == 64
    assert max(p.size for p in photos) == (500, 375)


def test_benchmark_prints_rates_and_saves_the_chart(bench, tmp_path, capsys):
    chart = tmp_path / "chart.png"
    # --threads 0 and --allocator default keep torch's thread count and glibc's settings: the test must not
    # change them for the rest of the session
    quick = ["--images", "4", "--repeats", "1", "--threads", "0", "--allocator", "default"]
    assert bench.main([*quick, "--output", str(chart)]) == 0
    printed = capsys.readouterr().out
    assert "stock PIL (MobileViTImageProcessorPil)" in printed and "speed-up of ours over stock PIL" in printed
    assert "v2: stock PIL, bicubic RGB" in printed and "x (v2 settings)" in printed  # MobileViTv2's preprocessing
    assert "default allocator" in printed
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):  # an existing chart is kept unless --overwrite
        bench.main([*quick, "--output", str(chart)])
    assert "exists" in capsys.readouterr().err


def test_fresh_process_condition_is_refused(bench, capsys):
    """Only `mobilevit benchmark` can run candidates in processes of their own; here it would mean 'default'."""
    with pytest.raises(SystemExit):
        bench.main(["--images", "1", "--repeats", "1", "--threads", "0", "--allocator", "fresh"])
    assert "invalid choice: 'fresh'" in capsys.readouterr().err
