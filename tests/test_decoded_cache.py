"""psa_core.decoded_cache: entries equal to what was decoded, bounded, shared with forked
workers; the three training datasets give the same samples with the cache on or off."""

from __future__ import annotations

import multiprocessing
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from psa_core import io
from psa_core.affinity import AffinityTrainDataset
from psa_core.cam import CamTrainDataset
from psa_core.decoded_cache import MB, DecodedCache
from psa_core.segmentation import SegTrainDataset
from psa_core.settings import AffinitySettings, CamSettings, SegmentationSettings
from psa_core.transforms import (
    IMAGENET_NORMALIZATION,
    AffinityTrainTransform,
    CamTrainTransform,
    SegTrainTransform,
    training_transform,
)
from tests.train_helpers import NUM_CLASSES, write_dataset

N_IMAGES = 6


def arrays(index: int) -> tuple[np.ndarray, ...]:
    """What a dataset's decode might return: uint8, float16 and a Fortran-ordered array."""
    rng = np.random.default_rng(index)
    image = rng.integers(0, 256, size=(5 + index, 7, 3), dtype=np.uint8)
    stack = rng.random((2, 3, 4, 4)).astype(np.float16)
    return image, stack, np.asfortranarray(rng.random((3, 4)))


class CountingLoad:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, index: int) -> tuple[np.ndarray, ...]:
        self.calls.append(index)
        return arrays(index)


def assert_same(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides
        assert a.flags.writeable == b.flags.writeable
        np.testing.assert_array_equal(a, b)


def test_entries_are_decoded_once_and_come_back_equal() -> None:
    cache, load = DecodedCache(4, limit_mb=1), CountingLoad()
    for _ in range(3):
        for index in range(4):
            assert_same(cache.get(index, load), arrays(index))
    assert load.calls == [0, 1, 2, 3]
    entries, used = cache.stats()
    assert entries == 4 and 0 < used <= MB
    first = cache.get(0, load)
    first[0][:] = 0  # a copy: the entry is untouched
    assert_same(cache.get(0, load), arrays(0))


def test_a_full_cache_leaves_the_rest_to_the_disk() -> None:
    one_entry = len(pickle.dumps(arrays(3), protocol=pickle.HIGHEST_PROTOCOL))
    cache, load = DecodedCache(4, limit_mb=1.5 * one_entry / MB), CountingLoad()
    for _ in range(2):
        for index in range(4):
            assert_same(cache.get(index, load), arrays(index))
    entries, used = cache.stats()
    assert entries == 1 and used <= cache.limit
    assert load.calls == [0, 1, 2, 3, 1, 2, 3]  # index 0 stored; the others read each time


def test_off_and_pickled_caches_always_load() -> None:
    load = CountingLoad()
    off = DecodedCache(2, limit_mb=0)
    off.get(0, load), off.get(0, load)
    on = DecodedCache(2, limit_mb=1)
    on.get(1, load)
    copy = pickle.loads(pickle.dumps(on))  # what a spawned worker would get
    copy.get(1, load)
    assert load.calls == [0, 0, 1, 1] and not copy.enabled and off.stats() == (0, 0)


def _fill(cache: DecodedCache, indices: list[int]) -> None:
    for index in indices:
        cache.get(index, arrays)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork: Linux")
def test_entries_a_forked_worker_stored_are_everyones() -> None:
    cache = DecodedCache(4, limit_mb=1)
    workers = [
        multiprocessing.get_context("fork").Process(target=_fill, args=(cache, half))
        for half in ([0, 1, 2], [2, 3])  # index 2 drawn by both
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0

    def must_not_load(index: int) -> tuple[np.ndarray, ...]:
        raise AssertionError(f"index {index} decoded again")

    for index in range(4):
        assert_same(cache.get(index, must_not_load), arrays(index))
    assert cache.stats()[0] == 4


# -- the training datasets --------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, list[str], dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("data")
    names, labels = write_dataset(root, n=N_IMAGES, sizes=(40, 90))
    return root, names, labels


def cam_dataset(images, cache_mb: float) -> CamTrainDataset:
    root, names, labels = images
    settings = CamSettings(crop_size=32, resize_long=(24, 60))
    transform = training_transform(CamTrainTransform, IMAGENET_NORMALIZATION, settings)
    return CamTrainDataset(root, names, labels, transform, seed=1, cache_mb=cache_mb)


def seg_dataset(images, cache_mb: float) -> SegTrainDataset:
    root, names, _ = images
    masks = root / "masks"
    if not masks.is_dir():
        masks.mkdir()
        for i, name in enumerate(names):
            h, w = io.read_image(root / "JPEGImages" / f"{name}.jpg").shape[:2]
            mask = np.random.default_rng(i).integers(0, NUM_CLASSES + 1, size=(h, w))
            mask[: h // 4] = 255
            # half the masks at a working size below the image's (docs/design.md §1.8)
            io.write_mask(masks / f"{name}.png", mask[::2, ::2] if i % 2 else mask)
    settings = SegmentationSettings(crop_size=32, resize_long=(24, 60))
    transform = training_transform(SegTrainTransform, IMAGENET_NORMALIZATION, settings)
    return SegTrainDataset(root, names, masks, transform, seed=2, cache_mb=cache_mb)


def affinity_dataset(images, cache_mb: float) -> AffinityTrainDataset:
    root, names, _ = images
    shard = root / "crf.h5"
    if not shard.is_file():
        scores = {}
        for i, name in enumerate(names):
            h, w = io.read_image(root / "JPEGImages" / f"{name}.jpg").shape[:2]
            stack = np.random.default_rng(i).random((2, 3, h, w), dtype=np.float32)
            scores[name] = (stack, np.arange(2))
        io.write_score_shard(shard, scores, attrs={"stage": "crf"})
    settings = AffinitySettings(crop_size=72)
    transform = training_transform(AffinityTrainTransform, IMAGENET_NORMALIZATION, settings)
    shards = dict.fromkeys(names, shard)
    return AffinityTrainDataset(root, names, shards, transform, seed=3, cache_mb=cache_mb)


@pytest.mark.parametrize("make", [cam_dataset, seg_dataset, affinity_dataset])
def test_samples_are_identical_with_the_cache_on_or_off(images, make) -> None:
    off, on = make(images, cache_mb=0), make(images, cache_mb=64)
    for epoch in range(2):  # epoch 1 reads every entry from the cache
        for index in range(N_IMAGES):
            want, got = off[(epoch, index)], on[(epoch, index)]
            assert len(got) == len(want)
            for a, b in zip(got, want, strict=True):
                assert a.dtype == b.dtype and torch.equal(a, b)
    assert on.cache.stats()[0] == N_IMAGES and off.cache.stats() == (0, 0)
