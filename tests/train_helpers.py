"""Shared by tests/test_train.py and tests/train_script.py: a tiny synthetic
dataset written with PIL (independent of psa_core.data.synthetic) and the tiny
CAM model; `one_torch_thread`, the body of the one-thread module fixtures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

NUM_CLASSES = 3
COLOURS = ((220, 40, 40), (40, 200, 60), (50, 60, 230))


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch at one thread inside, the previous count restored after (a module fixture's
    body: small tensors on a busy 2-core machine run faster on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_model(num_classes: int = NUM_CLASSES, seed: int = 0) -> nn.Module:
    """The tiny CAM backbone of psa_core.models, initialised from `seed`."""
    from psa_core.models import build_model

    torch.manual_seed(seed)
    return build_model("tiny", "cam", num_classes=num_classes)


def write_dataset(
    root: Path, n: int = 12, sizes: tuple[int, int] = (24, 44), seed: int = 0
) -> tuple[list[str], dict[str, np.ndarray]]:
    """n JPEGs under root/JPEGImages (random sizes in `sizes`), each with one
    or two coloured rectangles on noise; returns (names, labels)."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    names, labels = [], {}
    for i in range(n):
        h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
        image = rng.integers(0, 60, size=(h, w, 3)).astype(np.uint8)
        label = np.zeros(NUM_CLASSES, dtype=np.float32)
        for c in rng.choice(NUM_CLASSES, size=int(rng.integers(1, 3)), replace=False):
            y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            image[y : y + h // 2, x : x + w // 2] = COLOURS[c]
            label[c] = 1
        name = f"img_{i:03d}"
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=90)
        names.append(name)
        labels[name] = label
    return names, labels


def write_labels_json(path: Path, names: list[str], labels: dict[str, np.ndarray]) -> None:
    path.write_text(
        json.dumps({"names": names, "labels": {n: v.tolist() for n, v in labels.items()}})
    )


def read_labels_json(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    data = json.loads(path.read_text())
    return data["names"], {n: np.asarray(v, dtype=np.float32) for n, v in data["labels"].items()}
