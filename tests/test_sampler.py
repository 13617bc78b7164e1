import numpy as np
import pytest

from geoloc_lib.data.sampler import ProvinceBalancedBatchSampler, batch_composition


def _ids():
    # imbalanced like the real data: Sindh huge, AJK tiny
    return np.repeat(np.arange(7), [500, 80, 50, 40, 20, 30, 10])


def test_batch_of_64_is_16_sindh_and_8_each():
    sampler = ProvinceBalancedBatchSampler(_ids(), 64, 50, seed=0)
    assert sampler.counts.tolist() == [16, 8, 8, 8, 8, 8, 8]
    province = _ids()[sampler.epoch_batches(1)]
    for p, count in enumerate(sampler.counts):
        assert ((province == p).sum(1) == count).all()


def test_largest_remainder_rounding():
    # batch 10: exact 2.5, 1.25 x 6 -> floors 2,1,1,1,1,1,1 (8); remainder 2 goes to Sindh (.5) then Punjab (.25, lowest id)
    assert batch_composition(10, [0.25] + [0.125] * 6).tolist() == [3, 2, 1, 1, 1, 1, 1]
    for b in (7, 13, 32, 100, 256):
        assert batch_composition(b, [0.25] + [0.125] * 6).sum() == b


def test_small_provinces_cycle_through_every_photo_before_repeating():
    ids = _ids()
    sampler = ProvinceBalancedBatchSampler(ids, 64, 20, seed=3)
    draws = sampler.epoch_batches(1).reshape(-1)
    ajk = draws[ids[draws] == 6]  # 8 x 20 = 160 draws of 10 photos
    counts = np.bincount(ajk - 720, minlength=10)  # AJK photos are indices 720..729
    assert counts.min() == counts.max() == 16  # drawn with replacement, evenly
    sindh = draws[ids[draws] == 0]  # 320 draws of 500 photos: no repeats
    assert len(np.unique(sindh)) == len(sindh)


def test_epochs_differ_and_same_seed_epoch_repeat():
    a = ProvinceBalancedBatchSampler(_ids(), 64, 30, seed=7)
    b = ProvinceBalancedBatchSampler(_ids(), 64, 30, seed=7)
    np.testing.assert_array_equal(a.epoch_batches(4), b.epoch_batches(4))
    assert not np.array_equal(a.epoch_batches(1), a.epoch_batches(2))
    assert not np.array_equal(
        a.epoch_batches(1), ProvinceBalancedBatchSampler(_ids(), 64, 30, seed=8).epoch_batches(1)
    )
    a.set_epoch(4)
    assert [list(x) for x in a.epoch_batches(4)] == list(iter(a))


def test_missing_province_rule():
    ids = _ids()
    ids = ids[ids != 6]
    with pytest.warns(UserWarning, match="Azad Kashmir.*share goes to the other provinces"):
        sampler = ProvinceBalancedBatchSampler(ids, 64, 5)
    assert sampler.counts[6] == 0 and sampler.counts.sum() == 64
    assert sampler.epoch_batches(1).shape == (5, 64)
