"""The segmentation stage through the `psa` command line (in process): train-seg and package-seg-model
make a model folder, infer-seg and predict segment with it and agree, bad input is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from psa_core import io
from psa_core.data import listed_names, write_labels
from psa_core.segmentation import MODEL_FILE, WEIGHTS_FILE
from tests.cli_helpers import psa_in_process as psa
from tests.test_cli import CLASSES
from tests.train_helpers import COLOURS, write_dataset


def _masks_from_colours(root: Path, names: list[str]) -> Path:
    """Training masks: the class of each pixel whose colour is a class colour (else 0)."""
    folder = root / "masks"
    folder.mkdir()
    for name in names:
        image = io.read_image(root / "JPEGImages" / f"{name}.jpg").astype(int)
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
        for index, colour in enumerate(COLOURS, start=1):
            mask[np.abs(image - colour).sum(axis=2) < 60] = index
        mask[0, :] = 255  # an ignored row
        io.write_mask(folder / f"{name}.png", mask)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A model folder from a real `psa train-seg` (2 epochs on 8 small images) and
    `psa package-seg-model`."""
    tmp = tmp_path_factory.mktemp("seg")
    root = tmp / "data"
    names, labels = write_dataset(root, n=8, sizes=(40, 56))
    write_labels(tmp / "labels.json", CLASSES, labels)
    (tmp / "images.txt").write_text("\n".join(names) + "\n")
    masks = _masks_from_colours(root, names)
    model = tmp / "model"
    proc = psa(
        "train-seg", "--root", str(root), "--images", str(tmp / "images.txt"),
        "--labels", str(tmp / "labels.json"), "--masks", str(masks), "--backbone", "tiny",
        "--dilation", "2", "--epochs", "2", "--batch-size", "4", "--lr", "0.01",
        "--momentum", "0.9", "--crop-size", "48", "--resize-long", "40", "56",
        "--device", "cpu", "--checkpoint", str(tmp / "ckpt.pt"),
        "--out-log", str(tmp / "log.csv"), "--out", str(tmp / "weights.pt"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = psa(
        "package-seg-model", "--weights", str(tmp / "weights.pt"),
        "--labels", str(tmp / "labels.json"), "--backbone", "tiny", "--dilation", "2",
        "--scales", "1.0", "0.5", "--no-crf", "--settings", '{"seed": 0}',
        "--out", str(model),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return {"tmp": tmp, "root": root, "model": model, "images": tmp / "images.txt"}


def test_train_seg_writes_a_described_model_folder(trained) -> None:
    model = trained["model"]
    assert sorted(p.name for p in model.iterdir()) == sorted([MODEL_FILE, WEIGHTS_FILE])
    description = json.loads((model / MODEL_FILE).read_text())
    assert description["backbone"] == "tiny" and description["head"]["dilation"] == 2
    assert description["classes"] == ["background", *CLASSES]
    assert description["inference"] == {"scales": [1.0, 0.5], "flip": True, "crf": False}
    assert description["settings"]["pipeline"] == {"seed": 0}
    assert (model / WEIGHTS_FILE).read_bytes() == (trained["tmp"] / "weights.pt").read_bytes()
    assert not (trained["tmp"] / "ckpt.pt").exists()
    log = (trained["tmp"] / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,phase,loss")


def test_predict_agrees_with_infer_seg(trained, tmp_path: Path) -> None:
    """`psa predict` on a folder (no labels) gives infer-seg's masks, sizes and palette."""
    root = trained["root"]
    shard = tmp_path / "shard"
    proc = psa(
        "infer-seg", "--root", str(root), "--images", str(trained["images"]),
        "--model", str(trained["model"]), "--shard", "1", "--shard-size", "5",
        "--scales", "1.0", "0.5", "--batch-size", "2", "--device", "cpu",
        "--out-masks", str(shard),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    names = listed_names(trained["images"])
    assert sorted(p.stem for p in shard.glob("*.png")) == names[5:]

    folder = tmp_path / "new_images"
    folder.mkdir()
    for name in names[5:]:
        shutil.copy(root / "JPEGImages" / f"{name}.jpg", folder)
    out = tmp_path / "predicted"
    proc = psa(
        "predict", "--model", str(trained["model"]), "--images", str(folder),
        "--out", str(out), "--overlay", "--batch-size", "3", "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name in names[5:]:
        with Image.open(out / f"{name}.png") as mask, Image.open(folder / f"{name}.jpg") as img:
            assert mask.mode == "P" and mask.size == img.size
            assert mask.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
        predicted = io.read_mask(out / f"{name}.png")
        assert predicted.max() <= len(CLASSES)
        np.testing.assert_array_equal(predicted, io.read_mask(shard / f"{name}.png"))
        with Image.open(out / f"{name}.jpg") as overlay:
            assert overlay.size == img.size and overlay.mode == "RGB"

    # one image, and a list file, give the same masks
    single = tmp_path / "single"
    one = folder / f"{names[5]}.jpg"
    assert psa("predict", "--model", str(trained["model"]), "--images", str(one),
               "--out", str(single), "--device", "cpu").returncode == 0  # fmt: skip
    np.testing.assert_array_equal(
        io.read_mask(single / f"{names[5]}.png"), io.read_mask(out / f"{names[5]}.png")
    )
    listed = tmp_path / "list"
    (folder / "list.txt").write_text(f"\ufeff{one.name}\n", encoding="utf-8")  # a BOM
    assert psa("predict", "--model", str(trained["model"]), "--images",
               str(folder / "list.txt"), "--out", str(listed), "--device", "cpu").returncode == 0  # fmt: skip
    np.testing.assert_array_equal(
        io.read_mask(listed / f"{names[5]}.png"), io.read_mask(out / f"{names[5]}.png")
    )


def test_package_refuses_weights_of_another_head(trained, tmp_path: Path) -> None:
    """Weights that do not load into the described network stop packaging, one line."""
    proc = psa(
        "package-seg-model", "--weights", str(trained["tmp"] / "weights.pt"),
        "--labels", str(trained["tmp"] / "labels.json"), "--backbone", "vgg16d",
        "--out", str(tmp_path / "model"),
    )  # fmt: skip
    assert proc.returncode == 2 and "weights.pt" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "model").exists()


def test_predict_bad_input_is_one_line(trained, tmp_path: Path) -> None:
    model = str(trained["model"])
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = psa("predict", "--model", model, "--images", str(empty), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "no images in this folder" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and str(empty) in proc.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.jpg").write_bytes(b"not a jpeg")
    proc = psa("predict", "--model", model, "--images", str(broken), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "bad.jpg: cannot decode image" in proc.stderr
    assert "Traceback" not in proc.stderr

    old = tmp_path / "old_model"
    shutil.copytree(trained["model"], old)
    description = json.loads((old / MODEL_FILE).read_text())
    description["format"] = "psa-seg-model/0"
    (old / MODEL_FILE).write_text(json.dumps(description))
    image = next((trained["root"] / "JPEGImages").glob("*.jpg"))
    proc = psa("predict", "--model", str(old), "--images", str(image), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "model format 'psa-seg-model/0'" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = psa("predict", "--model", str(tmp_path / "nope"), "--images", str(image),
               "--out", str(tmp_path / "o"))  # fmt: skip
    assert proc.returncode == 2 and "model folder not found" in proc.stderr

    # a damaged model.json: each missing or mistyped key named in one line
    damages = {
        "key 'head': 'dilation' is a required property": lambda d: d["head"].pop("dilation"),
        "key 'head.dilation': '2' is not of type 'integer'": lambda d: d["head"].update(
            dilation="2"
        ),
        "'weights' is a required property": lambda d: d.pop("weights"),
        "key 'input.mean': [0.5] is too short": lambda d: d["input"].update(mean=[0.5]),
        "key 'classes': 'cat' is not of type 'array'": lambda d: d.update(classes="cat"),
        "key 'backbone': 'resnet99' is not one of": lambda d: d.update(backbone="resnet99"),
    }
    for message, damage in damages.items():
        damaged = json.loads((trained["model"] / MODEL_FILE).read_text())
        damage(damaged)
        (old / MODEL_FILE).write_text(json.dumps(damaged))
        proc = psa("predict", "--model", str(old), "--images", str(image),
                   "--out", str(tmp_path / "o"))  # fmt: skip
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert message in proc.stderr and str(old / MODEL_FILE) in proc.stderr


@pytest.mark.parametrize(("suffix", "overlay"), [(".jpg", True), (".png", False)])
def test_predict_never_writes_over_its_input_images(
    trained, tmp_path: Path, suffix: str, overlay: bool
) -> None:
    """`--out` equal to the images' folder: refused in one line when a mask (PNG input) or
    an overlay (JPEG input with --overlay) would replace an input; every input keeps its bytes."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for source in sorted((trained["root"] / "JPEGImages").glob("*.jpg"))[:2]:
        Image.open(source).save(folder / f"{source.stem}{suffix}")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    extra = ["--overlay"] if overlay else []
    proc = psa("predict", "--model", str(trained["model"]), "--images", str(folder),
               "--out", str(folder), "--device", "cpu", *extra)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "would overwrite the input image" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    one = next(folder.iterdir())
    proc = psa("predict", "--model", str(trained["model"]), "--images", str(one),
               "--out", str(one), "--device", "cpu")  # fmt: skip
    assert proc.returncode == 2 and "is an input image" in proc.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    if suffix == ".jpg":  # masks (.png) beside JPEG inputs replace nothing: allowed
        proc = psa("predict", "--model", str(trained["model"]), "--images", str(folder),
                   "--out", str(folder), "--device", "cpu")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert {p.name: p.read_bytes() for p in folder.glob("*.jpg")} == before
        assert sorted(p.stem for p in folder.glob("*.png")) == sorted(
            p.stem for p in folder.glob("*.jpg")
        )


def test_large_images_are_segmented_at_the_working_size(trained, tmp_path: Path) -> None:
    """An image above max_side: the network runs on it scaled down, and the mask (and the
    overlay) come back at the original size, the working-size mask scaled by nearest
    neighbour; infer-seg agrees. The model folder's max_side applies when none is given,
    and a model.json without one (older psa_core) gets the default."""
    import torch

    from psa_core.models import build_model
    from psa_core.transforms import resize, to_working_size

    torch.manual_seed(1)  # untrained weights whose masks show every class here
    io.save_torch(tmp_path / "seg.pt", build_model("tiny", "seg", 3, dilation=2).state_dict())
    model = tmp_path / "model"
    proc = psa("package-seg-model", "--weights", str(tmp_path / "seg.pt"),
               "--labels", str(trained["tmp"] / "labels.json"), "--backbone", "tiny",
               "--dilation", "2", "--scales", "1.0", "0.5", "--out", str(model))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    description = json.loads((model / MODEL_FILE).read_text())
    assert description["input"]["max_side"] == 1024  # the default, recorded

    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, size=(76, 100, 3)).astype(np.uint8)
    image[8:46, 8:55], image[30:70, 46:94] = COLOURS[0], COLOURS[2]
    root = tmp_path / "data"
    (root / "JPEGImages").mkdir(parents=True)
    Image.fromarray(image).save(root / "JPEGImages" / "big.jpg", quality=95)
    small_folder = tmp_path / "small"
    small_folder.mkdir()
    small = to_working_size(io.read_image(root / "JPEGImages" / "big.jpg"), 64)
    Image.fromarray(small).save(small_folder / "big.png")

    def predict(images: Path, out: Path, *extra: str, model: Path = model) -> np.ndarray:
        proc = psa("predict", "--model", str(model), "--images", str(images), "--out", str(out),
                   "--device", "cpu", *extra)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return io.read_mask(out / "big.png")

    at_working_size = predict(small_folder, tmp_path / "p-small", "--max-side", "none")
    assert at_working_size.shape == (49, 64)  # 76 x 100 scaled to a longest side of 64
    expected = resize(at_working_size, (76, 100), "nearest")
    assert len(np.unique(expected)) > 2  # the comparison has something to compare
    scaled = predict(root / "JPEGImages", tmp_path / "p-64", "--max-side", "64", "--overlay")
    np.testing.assert_array_equal(scaled, expected)
    with Image.open(tmp_path / "p-64" / "big.jpg") as overlay:
        assert overlay.size == (100, 76)

    (root / "list.txt").write_text("big\n")
    proc = psa("infer-seg", "--root", str(root), "--images", str(root / "list.txt"),
               "--model", str(model), "--max-side", "64", "--scales", "1.0", "0.5",
               "--device", "cpu", "--out-masks", str(tmp_path / "infer-seg"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(io.read_mask(tmp_path / "infer-seg" / "big.png"), expected)

    recorded = tmp_path / "model-64"
    shutil.copytree(model, recorded)
    description["input"]["max_side"] = 64
    (recorded / MODEL_FILE).write_text(json.dumps(description))
    by_model = predict(root / "JPEGImages", tmp_path / "p-recorded", model=recorded)
    np.testing.assert_array_equal(by_model, expected)
    del description["input"]["max_side"]  # a model folder from before max_side: the default
    (recorded / MODEL_FILE).write_text(json.dumps(description))
    unlimited = predict(root / "JPEGImages", tmp_path / "p-none", "--max-side", "none")
    by_old_model = predict(root / "JPEGImages", tmp_path / "p-old", model=recorded)
    np.testing.assert_array_equal(by_old_model, unlimited)
