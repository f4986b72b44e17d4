"""The multi-scale batch sampler: the table it promises, the batches it yields, on one and two ranks."""

import math

import pytest

from mobilevit.training.sampler import MultiScaleBatchSampler, SampleKey, multiscale_batch_table


def test_table_matches_ml_cvnets_defaults_for_256():
    table = multiscale_batch_table(256, 32)
    # ml-cvnets: linspace(160, 320, 5) = 160, 200, 240, 280, 320 plus the base 256, each rounded to the
    # nearest multiple of 32
    assert [h for h, _, _ in table] == [160, 192, 256, 288, 320]
    assert all(h == w and h % 32 == 0 for h, w, _ in table)
    batch = {h: b for h, _, b in table}
    assert batch[256] == 32
    assert batch[160] == round(32 * 256 ** 2 / 160 ** 2)  # 82: small images, big batches
    assert batch[320] == round(32 * 256 ** 2 / 320 ** 2)  # 20
    for h, w, b in table:  # about the same number of pixels in every batch
        assert abs(b * h * w / (32 * 256 * 256) - 1) < 0.1


def test_single_process_yields_promised_shapes_and_counts():
    sampler = MultiScaleBatchSampler(1000, 16, 256, seed=3)
    table = {(h, w): b for h, w, b in sampler.table}
    batches = list(sampler)
    assert len(batches) == len(sampler) == math.ceil(1000 / (sum(table.values()) / len(table)))
    seen = set()
    for batch in batches:
        assert all(isinstance(key, SampleKey) for key in batch)
        sizes = {(key.height, key.width) for key in batch}
        assert len(sizes) == 1  # one resolution per batch
        assert len(batch) == table[sizes.pop()]
        seen.update(key.index for key in batch)
    assert len({(b[0].height, b[0].width) for b in batches}) > 1  # several scales actually drawn
    assert len(seen) >= 0.6 * 1000 and all(0 <= i < 1000 for i in seen)


def test_fixed_size_covers_every_example_once_per_epoch():
    sampler = MultiScaleBatchSampler(100, 8, 64, multi_scale=False)
    batches = list(sampler)
    assert len(batches) == 13 and all(len(b) == 8 for b in batches)
    indices = [key.index for batch in batches for key in batch]
    assert set(indices[:100]) == set(range(100))  # the last batch wraps around into the next permutation
    assert {(k.height, k.width) for b in batches for k in b} == {(64, 64)}


def test_two_ranks_share_resolutions_and_split_the_data():
    ranks = [MultiScaleBatchSampler(400, 8, 128, num_replicas=2, rank=r, seed=7) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(2)
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0])
    for left, right in zip(*batches):
        assert (left[0].height, left[0].width) == (right[0].height, right[0].width)  # same step, same scale
        assert len(left) == len(right)
        assert not {k.index for k in left} & {k.index for k in right}  # disjoint shards
    # both ranks together cover the data the way one process with twice the batch would
    assert len(ranks[0]) == math.ceil(400 / (2 * sum(b for _, _, b in ranks[0].table) / len(ranks[0].table)))


def test_epoch_changes_the_plan_and_the_plan_is_reproducible():
    sampler = MultiScaleBatchSampler(200, 8, 128, seed=1)
    first = list(sampler)
    assert list(sampler) == first  # same epoch, same plan (resume relies on it)
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(MultiScaleBatchSampler(200, 8, 128, seed=2)) != first


@pytest.mark.parametrize("kwargs, field", [
    ({"num_samples": 10, "batch_size": 0, "image_size": 64}, "batch_size"),
    ({"num_samples": 0, "batch_size": 4, "image_size": 64}, "num_samples"),
    ({"num_samples": 10, "batch_size": 4, "image_size": 64, "num_replicas": 2, "rank": 2}, "rank"),
])
def test_bad_arguments_are_named(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MultiScaleBatchSampler(**kwargs)
