from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from devicetune.data import SyntheticFleet, summarize_synthetic


def test_same_seed_gives_the_same_devices() -> None:
    a, b = SyntheticFleet(50, seed=7), SyntheticFleet(50, seed=7)
    for k in (0, 13, 49):
        da, db = a.device(k), b.device(k)
        np.testing.assert_array_equal(da.x, db.x)
        np.testing.assert_array_equal(da.y, db.y)


def test_another_seed_gives_another_fleet() -> None:
    a, b = SyntheticFleet(5, seed=1).device(0), SyntheticFleet(5, seed=2).device(0)
    assert a.x.shape != b.x.shape or not np.allclose(a.x, b.x)


def test_a_device_does_not_depend_on_fleet_size_or_order() -> None:
    small, large = SyntheticFleet(10, seed=3), SyntheticFleet(10_000, seed=3)
    large.device(9_999)  # generating another device first changes nothing
    np.testing.assert_array_equal(small.device(4).x, large.device(4).x)


def test_devices_differ_in_label_mix_and_feature_statistics() -> None:
    fleet = SyntheticFleet(200, seed=0)
    summary = summarize_synthetic(fleet)
    # Label mixes: the typical device is far from the fleet's overall mix.
    assert summary.label_mix_distance.median > 0.25
    assert summary.classes_seen.p10 < 6
    # Feature statistics: per-device channel means spread across devices by a sizable
    # fraction of the within-device spread (personal gain, offset, rotation).
    assert summary.channel_mean_between_std > 0.2 * summary.channel_mean_within_std
    assert summary.style["rotation_deg"].p90 - summary.style["rotation_deg"].p10 > 20
    # Two devices' mean windows of the same class differ beyond noise.
    d0, d1 = fleet.device(0), fleet.device(1)
    shared = set(d0.y) & set(d1.y)
    c = min(shared)
    gap = np.abs(d0.x[d0.y == c].mean(axis=(0, 1)) - d1.x[d1.y == c].mean(axis=(0, 1)))
    assert gap.max() > 0.1


def test_data_arrives_in_bouts_so_early_windows_are_skewed() -> None:
    fleet = SyntheticFleet(100, seed=0)
    missing_early = 0
    for _, data in fleet.iter_devices():
        half = len(data) // 2
        missing_early += len(set(data.y[half:]) - set(data.y[:half])) > 0
    assert missing_early > 20


def test_ten_thousand_devices_stream_in_bounded_memory() -> None:
    fleet = SyntheticFleet(10_000, seed=0, windows_per_device=20)
    tracemalloc.start()
    windows = 0
    for _, data in fleet.iter_devices():
        windows += len(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held_if_stored = windows * 128 * 9 * 4
    assert windows > 150_000
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert peak < held_if_stored / 20


# Values computed by the per-device generator before it was vectorised (commit
# "Pin the synthetic generator's outputs"): a faster generator must give the same data.
_PINNED = {
    # device: (windows, first labels, x[0,0,0], x[-1,-1,-1], x[n//2,64,4], sum of x)
    0: (32, [4, 4, 4, 4, 2, 2, 2, 2], 0.33879318833351135, -0.2856765687465668,
        -0.338327556848526, 988.1224764774361),
    17: (61, [0, 0, 0, 0, 0, 0, 0, 0], -0.05370459333062172, -0.34316471219062805,
         -0.0916445404291153, -6032.511313779738),
    9999: (38, [3, 3, 3, 3, 3, 3, 3, 0], -0.06618525832891464, 0.2413240522146225,
           0.06151244416832924, 2854.638978159264),
}


def test_the_generator_gives_the_pinned_values_for_its_seed() -> None:
    fleet = SyntheticFleet(10_000, seed=0, windows_per_device=40)
    for device, (windows, first, first_x, last_x, middle_x, total) in _PINNED.items():
        data = fleet.device(device)
        assert len(data) == windows
        assert data.y[:8].tolist() == first
        assert data.x.dtype == np.float32
        np.testing.assert_allclose(
            [data.x[0, 0, 0], data.x[-1, -1, -1], data.x[len(data) // 2, 64, 4]],
            [first_x, last_x, middle_x], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(data.x.astype(np.float64).sum(), total, rtol=1e-7)
    other = SyntheticFleet(50, seed=7, cohort=1).device(3)
    assert len(other) == 47 and other.y[:8].tolist() == [2] * 8
    np.testing.assert_allclose(other.x[2, 5, 6], -0.521065354347229, rtol=1e-6)
    np.testing.assert_allclose(other.x.astype(np.float64).sum(), -3921.2313418192734,
                               rtol=1e-7)


def test_the_first_windows_of_a_device_are_those_of_the_whole_device() -> None:
    # A round trains on each device's past only, generated alone: it must be exactly
    # the start of the device its evaluation sees in full.
    for label_shift in (None, (2, 0.3)):
        fleet = SyntheticFleet(1_000, seed=5, windows_per_device=30,
                               label_shift=label_shift)
        devices = [0, 7, 123, 999, 500]
        kept: dict[int, int] = {}

        def first(device_id: int, windows: int, kept: dict[int, int] = kept) -> int:
            kept[device_id] = device_id % windows  # 0 .. windows - 1, varied
            return kept[device_id]

        past = fleet.devices_data(devices, first=first)
        for device, data in zip(devices, past, strict=True):
            whole = fleet.device(device)
            assert len(data) == kept[device] < len(whole)
            np.testing.assert_array_equal(data.x, whole.x[:kept[device]])
            np.testing.assert_array_equal(data.y, whole.y[:kept[device]])
            np.testing.assert_array_equal(data.user, whole.user[:kept[device]])
        everything = fleet.devices_data(devices, first=lambda _, windows: windows)
        for device, data in zip(devices, everything, strict=True):
            np.testing.assert_array_equal(data.x, fleet.device(device).x)


def test_asking_for_more_windows_than_a_device_has_is_refused() -> None:
    fleet = SyntheticFleet(10, seed=0)
    with pytest.raises(ValueError, match="first"):
        fleet.devices_data([3], first=lambda _, windows: windows + 1)
