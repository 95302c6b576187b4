"""psa_core.training: poly schedule, per-sample determinism, and resume that ends
bit-identical to an uninterrupted run, in-process and across a real SIGTERM."""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from psa_core import io
from psa_core.cam import (
    CamTrainDataset,
    _wide_field_warmup,
    fit_cam,
    multilabel_soft_margin_loss,
)
from psa_core.errors import PsaError
from psa_core.settings import CamSettings
from psa_core.training import (
    EpochBatchSampler,
    RunBatchSampler,
    TrainingInterrupted,
    build_optimizer,
    epoch_order,
    sample_rng,
    train,
    training_loader,
)
from psa_core.transforms import IMAGENET_NORMALIZATION, CamTrainTransform, training_transform
from tests.train_helpers import (
    one_torch_thread,
    tiny_model,
    write_dataset,
    write_labels_json,
)

REPO = Path(__file__).resolve().parents[1]
EPOCHS, BATCH, N_IMAGES = 2, 4, 14  # 3 steps per epoch (2 images dropped each epoch)
STEPS_PER_EPOCH = N_IMAGES // BATCH
MAX_STEP = EPOCHS * STEPS_PER_EPOCH
LR = 0.01


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: fast on a busy 2-core machine, and as in train_script.py."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    names, labels = write_dataset(root, n=N_IMAGES + 4)
    return root, names[:N_IMAGES], labels, names[N_IMAGES:]


SETTING_NAMES = {f.name for f in dataclasses.fields(CamSettings)}


def run(dataset, out: Path, *, interrupt_at: int | None = None, val: bool = False, **overrides):
    """fit_cam on the tiny model; SIGTERM to ourselves after step `interrupt_at`.

    `overrides` are `CamSettings` fields, the data (`names`) or `fit_cam` keywords.
    """
    root, names, labels, val_names = dataset

    def on_step(step: int) -> None:
        if step == interrupt_at:
            signal.raise_signal(signal.SIGTERM)

    cam = {"crop_size": 32, "resize_long": (24, 40), "epochs": EPOCHS, "batch_size": BATCH}
    cam["lr"] = LR
    cam.update({k: v for k, v in overrides.items() if k in SETTING_NAMES})
    kwargs = dict(
        out_weights=out / "weights.pt",
        checkpoint_path=out / "checkpoint.pt",
        log_csv=out / "log.csv",
        seed=5,
        device="cpu",
        log_every=1,
        progress=False,
        val_names=val_names if val else None,
        on_step=on_step,
    )
    kwargs.update({k: v for k, v in overrides.items() if k not in SETTING_NAMES})
    names = kwargs.pop("names", names)
    return fit_cam(tiny_model(), root, names, labels, CamSettings(**cam), **kwargs)


def read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = io.load_torch(a), io.load_torch(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """An uninterrupted run (with validation), the baseline for every resume test."""
    out = tmp_path_factory.mktemp("reference")
    summary = run(dataset, out, val=True)
    return out, summary


# -- sampling ---------------------------------------------------------------------


def test_epoch_order_and_batches():
    order = epoch_order(seed=1, epoch=0, n=10)
    assert sorted(order) == list(range(10))
    np.testing.assert_array_equal(order, epoch_order(1, 0, 10))
    assert not np.array_equal(order, epoch_order(1, 1, 10))
    batches = list(EpochBatchSampler(10, 3, seed=1, epoch=0))
    assert len(batches) == 3 and all(len(b) == 3 for b in batches)  # last partial one dropped
    assert [i for b in batches for _, i in b] == list(order[:9])
    assert all(e == 0 for b in batches for e, _ in b)
    assert list(EpochBatchSampler(10, 3, seed=1, epoch=0, start=2)) == batches[2:]


def test_run_batches_are_the_epochs_batches_in_a_row():
    epochs = [list(EpochBatchSampler(10, 3, seed=1, epoch=e)) for e in range(3)]
    assert list(RunBatchSampler(10, 3, seed=1, epochs=3, epoch=0, start=0)) == sum(epochs, [])
    resumed = RunBatchSampler(10, 3, seed=1, epochs=3, epoch=1, start=2)
    assert list(resumed) == epochs[1][2:] + epochs[2] and len(resumed) == 4


def test_sample_streams_are_distinct():
    draws = {
        tuple(sample_rng(0, e, i).integers(1 << 30, size=2)) for e in range(3) for i in range(3)
    }
    assert len(draws) == 9  # SeedSequence pads with zeros; the stream tag avoids collisions


# -- optimiser and schedule -------------------------------------------------------


def test_poly_lr_per_group():
    model = tiny_model()
    max_step, power = 10, 0.9
    optimizer, scheduler = build_optimizer(
        model, lr=0.1, weight_decay=5e-4, momentum=0.0, max_step=max_step, poly_power=power
    )
    groups = optimizer.param_groups
    assert len(groups) == 4
    assert [g["weight_decay"] for g in groups] == [5e-4, 0, 5e-4, 0]
    assert sum(len(g["params"]) for g in groups[2:]) > 0  # the new classifier
    for step in range(max_step):
        factor = (1 - step / max_step) ** power
        for group, mult in zip(groups, (1, 2, 10, 20), strict=True):
            assert group["lr"] == pytest.approx(0.1 * mult * factor, rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_log_lr_follows_poly_schedule(reference):
    out, summary = reference
    rows = read_log(out / "log.csv")
    train_rows = [r for r in rows if r["phase"] == "train"]
    assert [int(r["step"]) for r in train_rows] == list(range(1, MAX_STEP + 1))
    for r in train_rows:
        expected = LR * (1 - (int(r["step"]) - 1) / MAX_STEP) ** 0.9
        assert float(r["lr"]) == pytest.approx(expected, rel=1e-5)
        assert np.isfinite(float(r["loss"])) and float(r["images_per_s"]) > 0
    val_rows = [r for r in rows if r["phase"] == "val"]
    assert [int(r["epoch"]) for r in val_rows] == [1, 2]
    assert summary["steps"] == MAX_STEP and summary["resumed_from_step"] == 0


def test_completed_run_leaves_weights_only(reference):
    out, _ = reference
    assert not (out / "checkpoint.pt").exists()
    weights = io.load_torch(out / "weights.pt")  # weights_only=True
    assert weights.keys() == tiny_model().state_dict().keys()


# -- resume -----------------------------------------------------------------------


@pytest.mark.parametrize("interrupt_at", [1, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 1])
def test_interrupted_and_resumed_equals_uninterrupted(dataset, reference, tmp_path, interrupt_at):
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        run(dataset, tmp_path, interrupt_at=interrupt_at, val=True)
    assert info.value.exit_code == 128 + signal.SIGTERM and info.value.step == interrupt_at
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    assert not (tmp_path / "weights.pt").exists()
    checkpoint = io.load_torch(tmp_path / "checkpoint.pt")  # loads with weights_only=True
    assert checkpoint["global_step"] == interrupt_at

    summary = run(dataset, tmp_path, val=True)
    assert summary["resumed_from_step"] == interrupt_at
    assert not (tmp_path / "checkpoint.pt").exists()
    assert_same_weights(tmp_path / "weights.pt", reference[0] / "weights.pt")
    rows = read_log(tmp_path / "log.csv")
    assert [int(r["step"]) for r in rows if r["phase"] == "train"] == list(range(1, MAX_STEP + 1))
    assert [int(r["epoch"]) for r in rows if r["phase"] == "val"] == [1, 2]


def test_periodic_checkpoint_and_workers_do_not_change_the_result(dataset, reference, tmp_path):
    run(dataset, tmp_path, val=True, num_workers=2, checkpoint_every=2)
    assert_same_weights(tmp_path / "weights.pt", reference[0] / "weights.pt")


# -- the input pipeline -------------------------------------------------------------


def loader_batches(dataset, num_workers: int, cache_mb: float) -> list[tuple[torch.Tensor, ...]]:
    """Every batch of a 2-epoch run from `training_loader`, resumed at epoch 0, batch 1."""
    root, names, labels, _ = dataset
    settings = CamSettings(crop_size=32, resize_long=(24, 40))
    transform = training_transform(CamTrainTransform, IMAGENET_NORMALIZATION, settings)
    images = CamTrainDataset(root, names, labels, transform, seed=5, cache_mb=cache_mb)
    sampler = RunBatchSampler(len(names), BATCH, seed=5, epochs=EPOCHS, epoch=0, start=1)
    return list(training_loader(images, sampler, num_workers, torch.device("cpu")))


def test_batches_do_not_depend_on_workers_or_the_image_cache(dataset):
    want = loader_batches(dataset, num_workers=0, cache_mb=0)
    assert len(want) == MAX_STEP - 1
    for num_workers, cache_mb in ((0, 64), (2, 0), (2, 64)):
        got = loader_batches(dataset, num_workers, cache_mb)
        case = f"{num_workers} workers, cache {cache_mb} MB"
        assert len(got) == len(want), case
        for a, b in zip(got, want, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), case


class WithPid(torch.utils.data.Dataset):
    """A training dataset whose samples also say which process made them."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, key):
        return (*self.inner[key], torch.tensor(os.getpid()))


def test_one_loader_serves_the_run_with_auto_workers_from_the_threads(dataset, tmp_path):
    """`auto` with 3 threads: 2 workers, started once for all 3 epochs (not 2 per epoch)."""
    root, names, labels, _ = dataset
    settings = CamSettings(
        crop_size=32, resize_long=(24, 40), epochs=3, batch_size=BATCH, num_workers="auto"
    )
    transform = training_transform(CamTrainTransform, IMAGENET_NORMALIZATION, settings)
    images = WithPid(CamTrainDataset(root, names, labels, transform, seed=5, cache_mb=8))
    pids = []

    def loss_fn(model, batch):
        *batch, pid = batch
        pids.extend(pid.tolist())
        return multilabel_soft_margin_loss(model, batch)

    torch.set_num_threads(3)
    try:
        train(
            tiny_model(),
            images,
            loss_fn,
            settings,
            device="cpu",
            out_weights=tmp_path / "weights.pt",
            checkpoint_path=tmp_path / "checkpoint.pt",
            log_csv=tmp_path / "log.csv",
            progress=False,
        )
    finally:
        torch.set_num_threads(1)
    assert len(pids) == 3 * STEPS_PER_EPOCH * BATCH
    assert len(set(pids)) == 2 and os.getpid() not in pids


def test_auto_workers_are_the_threads_but_one():
    assert CamSettings(num_workers="auto").loader_workers(4) == 3
    assert CamSettings(num_workers="auto").loader_workers(1) == 0
    assert CamSettings(num_workers=2).loader_workers(8) == 2
    with pytest.raises(PsaError, match="num_workers 'many': give a count >= 0 or auto"):
        CamSettings(num_workers="many").loader_workers(4)


def test_resume_with_other_settings_is_refused(dataset, tmp_path):
    with pytest.raises(TrainingInterrupted):
        run(dataset, tmp_path, interrupt_at=2)
    with pytest.raises(
        PsaError, match=r"checkpoint of a different training run \(settings\.lr: 0\.01 -> 0\.02"
    ):
        run(dataset, tmp_path, lr=0.02)
    with pytest.raises(PsaError, match="dataset: .*names"):
        run(dataset, tmp_path, names=dataset[1][:-1])
    assert (tmp_path / "checkpoint.pt").exists()  # left alone for the user to decide
    run(dataset, tmp_path)  # the original settings still resume


def test_foreign_checkpoint_is_refused(dataset, tmp_path):
    io.save_torch(tmp_path / "checkpoint.pt", {"weight": torch.zeros(1)})
    with pytest.raises(PsaError, match="not a psa training checkpoint"):
        run(dataset, tmp_path)


def test_bad_arguments(dataset, tmp_path):
    with pytest.raises(PsaError, match="larger than the training set"):
        run(dataset, tmp_path, batch_size=100)
    with pytest.raises(PsaError, match="seed"):
        run(dataset, tmp_path, seed=-1)
    with pytest.raises(PsaError, match="no labels"):
        run(dataset, tmp_path, names=[*dataset[1], "missing"])


# -- a real SIGTERM to a training process -------------------------------------------


def test_sigterm_subprocess_then_resume(tmp_path):
    root = tmp_path / "data"
    names, labels = write_dataset(root, n=16)
    write_labels_json(root / "labels.json", names, labels)
    epochs = 12  # 4 steps an epoch, 48 steps: the kill lands mid-run (after step 10)
    total = epochs * 4
    out = tmp_path / "run"
    command = [sys.executable, str(REPO / "tests" / "train_script.py"), str(root), str(out)]
    command.append(str(epochs))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    victim = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    log = out / "log.csv"
    partial = out / "log.csv.partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and victim.poll() is None:
        if partial.is_file() and len(partial.read_text().splitlines()) > 10:  # header + 10 steps
            break
        time.sleep(0.005)
    assert victim.poll() is None, "training ended before the signal: " + victim.stderr.read()
    victim.send_signal(signal.SIGTERM)
    stderr = victim.communicate(timeout=60)[1]
    assert victim.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM" in stderr
    assert (out / "checkpoint.pt").is_file()
    assert not (out / "weights.pt").exists()
    steps_done = io.load_torch(out / "checkpoint.pt")["global_step"]
    assert 10 <= steps_done < total

    resumed = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    # meanwhile, the uninterrupted reference: the same function, in this process
    from tests.train_script import main as train_script_main

    assert train_script_main(root, tmp_path / "reference", epochs) == 0
    stderr = resumed.communicate(timeout=120)[1]
    assert resumed.returncode == 0, stderr
    assert f"resuming from {out / 'checkpoint.pt'} at step {steps_done}/{total}" in stderr
    assert not (out / "checkpoint.pt").exists()
    assert_same_weights(out / "weights.pt", tmp_path / "reference" / "weights.pt")
    assert [int(r["step"]) for r in read_log(log)] == list(range(1, total + 1))


# -- cam.wide_field_share ---------------------------------------------------------


def test_wide_field_warmup_dilates_the_first_share_of_the_steps():
    model = tiny_model()
    before_step = _wide_field_warmup(model, 0.5)
    seen = []
    for step in range(MAX_STEP):
        before_step(step, MAX_STEP)
        seen.append([c.dilation[0] for b in (model.backbone.block5, model.backbone.block6)
                     for c in (b.conv1, b.conv2)])  # fmt: skip
    assert seen == [[2, 2, 4, 4]] * (MAX_STEP // 2) + [[1, 1, 1, 1]] * (MAX_STEP // 2)
    assert _wide_field_warmup(model, 0.0) is None
    with pytest.raises(PsaError, match="cam.wide_field_share 0.5: only the tiny backbone"):
        _wide_field_warmup(torch.nn.Linear(2, 2), 0.5)


def test_wide_field_warmup_changes_training_and_resumes_exactly(dataset, reference, tmp_path):
    """Interrupted inside the wide part and resumed: the same weights as one run, which
    differ from the run without the warm-up (the dilation did act)."""
    (tmp_path / "straight").mkdir(), (tmp_path / "resumed").mkdir()
    straight = run(dataset, tmp_path / "straight", val=True, wide_field_share=0.5)
    assert straight["resumed_from_step"] == 0
    with pytest.raises(TrainingInterrupted):
        run(dataset, tmp_path / "resumed", interrupt_at=1, val=True, wide_field_share=0.5)
    assert (
        run(dataset, tmp_path / "resumed", val=True, wide_field_share=0.5)["resumed_from_step"] == 1
    )
    assert_same_weights(tmp_path / "resumed" / "weights.pt", tmp_path / "straight" / "weights.pt")
    a = io.load_torch(tmp_path / "straight" / "weights.pt")
    b = io.load_torch(reference[0] / "weights.pt")
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)
