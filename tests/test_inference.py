"""The streaming engine behind predict and the pipelines: finding images, worker threads, batches by shape, order."""

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mobilevit.errors import UserError
from mobilevit.inference import (
    ImageInput,
    Prepared,
    WorkerPool,
    batches,
    check_headers,
    find_images,
    in_order,
    prepare_image,
    stream,
)


@pytest.fixture
def tree(tmp_path, photo):
    """photos/ with nested sub-folders, a hidden file and folder, a text file and a truncated JPEG."""
    root = tmp_path / "photos"
    (root / "b" / "deeper").mkdir(parents=True)
    (root / "a").mkdir()
    (root / ".hidden").mkdir()
    photo.save(root / "top.jpg")
    photo.save(root / "a" / "one.png")
    photo.resize((40, 90)).save(root / "b" / "deeper" / "tall.JPEG")
    photo.save(root / ".hidden" / "ignored.jpg")
    photo.save(root / ".dot.jpg")
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / "README").write_text("no extension")
    data = (root / "top.jpg").read_bytes()
    (root / "b" / "cut.jpg").write_bytes(data[: len(data) // 2])
    return root


def test_find_images_walks_folders_in_order_and_counts_what_it_leaves_out(tree):
    found = find_images([tree, tree / "top.jpg"])
    assert [f.relative for f in found.files] == ["top.jpg", "a/one.png", "b/cut.jpg", "b/deeper/tall.JPEG"]
    assert found.files[0].path == str(tree / "top.jpg")  # the folder's path joined, as the user wrote it
    assert dict(found.skipped) == {".txt": 1, "": 1}
    assert found.skipped_line() == ("skipped 2 files without an image extension in the folders (1 (no extension), "
                                    "1 .txt)")
    # a file named by itself is taken whatever its extension; a path that is not there is named
    assert [f.relative for f in find_images([tree / "b" / "notes.txt"]).files] == ["notes.txt"]
    with pytest.raises(UserError, match="images: no such file or folder '.*missing'"):
        find_images([tree / "missing"])


def test_check_headers_finds_what_the_header_shows_and_leaves_truncated_data_to_decoding(tree):
    results = dict(check_headers([str(tree / "top.jpg"), str(tree / "b" / "notes.txt"), str(tree / "b" / "cut.jpg")]))
    assert results[str(tree / "top.jpg")] is None
    assert "is not an image file Pillow can read" in results[str(tree / "b" / "notes.txt")]
    assert results[str(tree / "b" / "cut.jpg")] is None  # only a full decode finds the missing data
    from mobilevit import MobileViTImageProcessor

    cut = str(tree / "b" / "cut.jpg")
    item = prepare_image(ImageInput(cut, cut), MobileViTImageProcessor())
    assert item.pixel_values is None and "cannot be decoded, the file is truncated or corrupt" in item.error
    assert str(tree / "b" / "cut.jpg") in item.error


def test_prepare_image_keeps_the_whole_image_when_asked(tree):
    from mobilevit import MobileViTImageProcessor

    processor = MobileViTImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    source = ImageInput("tall", str(tree / "b" / "deeper" / "tall.JPEG"))
    cropped = prepare_image(source, processor)
    whole = prepare_image(source, processor, whole_image=True, keep_photo=True)
    assert cropped.pixel_values.shape == (3, 64, 64) and cropped.photo is None
    assert whole.pixel_values.shape == (3, 144, 64) and whole.size == (90, 40) and whole.photo.shape == (90, 40, 3)


def _item(position, shape=(3, 4, 4), error=None):
    return Prepared(position, ImageInput(str(position), None), None if error else torch.zeros(shape), (4, 4),
                    error=error)


def test_batches_group_one_shape_and_let_errors_go_alone():
    items = [_item(0), _item(1, (3, 8, 4)), _item(2), _item(3, error="bad"), _item(4), _item(5, (3, 8, 4))]
    got = [[i.position for i in group] for group in batches(items, batch_size=3)]
    assert got == [[3], [0, 2, 4], [1, 5]]
    # at most max_pending images wait: then the fullest group goes as it is (the first of equals)
    got = [[i.position for i in group] for group in batches(items, batch_size=3, max_pending=2)]
    assert got == [[0], [1], [3], [2, 4], [5]]


def test_in_order_restores_positions():
    shuffled = [(_item(p),) for p in (2, 0, 3, 1, 5, 4)]
    assert [r[0].position for r in in_order(shuffled)] == list(range(6))


def test_stream_returns_each_image_its_own_outputs_in_input_order():
    """Two shapes interleaved: batches form per shape, outputs come back per image and in input order."""
    sizes = [(8, 8), (8, 12), (8, 8), (8, 12), (8, 8)]
    inputs = [ImageInput(f"i{n}", np.full((h, w, 3), n, np.uint8)) for n, (h, w) in enumerate(sizes)]

    def prepare(source, position):
        pixels = torch.from_numpy(source.image).permute(2, 0, 1).float()
        return Prepared(position, source, pixels, tuple(source.image.shape[:2]))

    calls = []

    def runtime(pixel_values):
        calls.append(tuple(pixel_values.shape))
        return {"mean": pixel_values.mean(dim=(1, 2, 3)),
                "shape": torch.tensor([pixel_values.shape[-1]] * len(pixel_values))}

    with WorkerPool(2) as pool:
        results = list(stream(inputs, prepare, runtime, batch_size=2, pool=pool))
    assert [item.source.name for item, _ in results] == [f"i{n}" for n in range(5)]
    assert [float(out["mean"]) for _, out in results] == [0, 1, 2, 3, 4]
    assert [int(out["shape"]) for _, out in results] == [w for _, w in sizes]
    assert sorted(calls) == [(1, 3, 8, 8), (2, 3, 8, 8), (2, 3, 8, 12)]


def test_workers_keep_the_main_threads_torch_setting():
    before = torch.get_num_threads()
    with WorkerPool(2) as pool:
        seen = [f.result() for f in [pool.submit(torch.get_num_threads) for _ in range(4)]]
        assert torch.get_num_threads() == before
    assert seen == [1, 1, 1, 1]
    assert torch.get_num_threads() == before
    started = []
    thread = threading.Thread(target=lambda: started.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert started == [before]  # threads started later begin with the process's setting, not the workers'


def test_workers_wait_while_the_model_runs_when_they_would_share_its_cpus():
    with WorkerPool(1, model_threads=10_000) as pool:  # more threads than any machine has CPUs
        assert pool.pauses
        with pool.paused():
            future = pool.submit(time.monotonic)
            time.sleep(0.2)
            assert not future.done()
            released = time.monotonic()
        assert future.result(timeout=5) >= released
    with WorkerPool(1, model_threads=0) as pool:
        assert not pool.pauses
        with pool.paused():
            assert pool.submit(lambda: 42).result(timeout=5) == 42


def test_a_failing_task_raises_where_its_result_is_read():
    with WorkerPool(1) as pool:
        future = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            future.result(timeout=5)
        assert list(pool.map(lambda x: 2 * x, range(10), window=3)) == [2 * x for x in range(10)]
    with WorkerPool(0) as pool:  # no threads: the calling thread does the work
        assert pool.submit(threading.get_ident).result() == threading.get_ident()


def test_tiny_images_are_read_like_large_ones(tmp_path):
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "dot.png")
    from mobilevit import MobileViTImageProcessor

    item = prepare_image(ImageInput("dot", str(tmp_path / "dot.png")), MobileViTImageProcessor())
    assert item.error is None and item.pixel_values.shape == (3, 256, 256)
