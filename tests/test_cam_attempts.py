"""`cam.attempts`: the CAM classifier trained again at the next seed while its final loss
stays above `cam.retry_above` of a constant guess's, the lowest-loss attempt kept; resumable
per attempt, and a finished attempt of other settings trained again."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import psa_core.cam
from psa_core import io
from psa_core.data import write_labels
from psa_core.evaluate import loss_and_guess
from psa_core.settings import CamSettings, ModelSettings, RunSettings
from psa_core.stages.cam import train_cam
from psa_core.stages.common import LabelledImages, TrainingFiles
from tests.train_helpers import NUM_CLASSES, one_torch_thread, write_dataset

CLASSES = [f"class{i}" for i in range(NUM_CLASSES)]
N_TRAIN, N_VAL = 12, 4
SMALL = {"crop_size": 32, "resize_long": (24, 40), "epochs": 2, "batch_size": 4, "lr": 0.01}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """12 training and 4 validation images of the tiny test set: train_cam's data keywords
    and the label matrices of both lists."""
    tmp = tmp_path_factory.mktemp("attempts")
    names, labels = write_dataset(tmp / "data", n=N_TRAIN + N_VAL)
    write_labels(tmp / "labels.json", CLASSES, labels)
    io.write_lines(tmp / "train.txt", names[:N_TRAIN])
    io.write_lines(tmp / "val.txt", names[N_TRAIN:])
    matrices = tuple(
        np.stack([labels[n] for n in part]) for part in (names[:N_TRAIN], names[N_TRAIN:])
    )
    keywords = {
        "data": LabelledImages(
            root=tmp / "data", images=tmp / "train.txt", labels=tmp / "labels.json"
        ),
        "val_images": tmp / "val.txt",
        "val_labels": None,
        "model": ModelSettings(backbone="tiny"),
    }
    return {"keywords": keywords, "matrices": matrices}


def train(data: dict, out: Path, seed: int = 0, **cam: object) -> TrainingFiles:
    out.mkdir(parents=True, exist_ok=True)
    files = TrainingFiles(
        checkpoint=out / "checkpoint.pt", out_log=out / "log.csv", out=out / "weights.pt"
    )
    settings = CamSettings(**{**SMALL, **cam})
    train_cam(
        **data["keywords"], files=files, cam=settings, run=RunSettings(device="cpu", seed=seed)
    )
    return files


def share(data: dict, log_csv: Path) -> float:
    _, loss, guess = loss_and_guess(log_csv, *data["matrices"])
    return loss / guess


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = io.load_torch(a), io.load_torch(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def single(data, tmp_path_factory) -> list[TrainingFiles]:
    """One training at each of the seeds 0 to 3 (cam.attempts 1): the references."""
    root = tmp_path_factory.mktemp("single")
    return [train(data, root / f"seed{seed}", seed=seed) for seed in range(4)]


def losses(log_csv: Path) -> list[tuple[str, str, str]]:
    """(step, phase, loss) of a training log's rows (the rest are timings)."""
    rows = [line.split(",") for line in log_csv.read_text().splitlines()]
    return [(r[0], r[2], r[3]) for r in rows]


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if ".attempt" in p.name)


def test_a_learned_first_attempt_is_the_one_training(data, single, tmp_path) -> None:
    """At or below cam.retry_above the first attempt is kept: the weights and log of a
    plain training at the run's seed, and no attempt files are left."""
    files = train(data, tmp_path, attempts=3, retry_above=1.0)
    assert same_weights(files.out, single[0].out)
    assert losses(files.out_log) == losses(single[0].out_log)
    assert leftovers(tmp_path) == []


def test_each_attempt_is_a_new_seed_and_the_lowest_loss_is_kept(
    data, single, tmp_path, caplog
) -> None:
    """From a seed after which a later seed scores lowest (so keeping the first or the
    last attempt would be caught), with cam.retry_above below every attempt: three
    trainings at the next seeds, the lowest-loss one kept."""
    shares = [share(data, files.out_log) for files in single]
    start = next(s for s in range(2) if np.argmin(shares[s : s + 3]) == 1)
    best = start + 1
    with caplog.at_level(logging.INFO, logger="psa"):
        files = train(data, tmp_path, seed=start, attempts=3, retry_above=1e-6)
    assert same_weights(files.out, single[best].out)
    assert losses(files.out_log) == losses(single[best].out_log)
    tried = [r.getMessage() for r in caplog.records if "train-cam: attempt" in r.getMessage()]
    assert [int(m.split(" (seed ")[1][0]) for m in tried] == [start, start + 1, start + 2]
    assert "kept attempt 2 of 3" in caplog.text
    assert leftovers(tmp_path) == []


def test_attempts_stop_at_the_first_learned_one(data, single, tmp_path, count_fits) -> None:
    """From a seed whose next seed scores lower, with cam.retry_above between the two:
    two trainings, the second kept."""
    shares = [share(data, files.out_log) for files in single]
    start = next(s for s in range(3) if shares[s + 1] < shares[s])
    calls = count_fits()
    retry_above = (shares[start] + shares[start + 1]) / 2
    files = train(data, tmp_path, seed=start, attempts=3, retry_above=retry_above)
    assert len(calls) == 2 and same_weights(files.out, single[start + 1].out)


@pytest.fixture
def count_fits(monkeypatch):
    """A function that wraps psa_core.cam.fit_cam (which train_cam imports at each call)
    to count its calls in the list it returns, and to raise on call `fail_at` (1-based)."""
    original = psa_core.cam.fit_cam

    def wrap(fail_at: int | None = None) -> list[int]:
        calls: list[int] = []

        def fit_cam(*args, **kwargs):
            calls.append(1)
            if len(calls) == fail_at:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(psa_core.cam, "fit_cam", fit_cam)
        return calls

    return wrap


def test_a_killed_job_resumes_after_its_finished_attempts(
    data, single, tmp_path, count_fits
) -> None:
    """Killed in the second attempt: the rerun trains the second and third only, and ends
    as an uninterrupted run. Killed again and rerun with another lr: the finished first
    attempt is of other settings, so it trains again."""
    shares = [share(data, files.out_log) for files in single[:3]]
    calls = count_fits(fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path / "a", attempts=3, retry_above=1e-6)
    assert (tmp_path / "a" / "weights.attempt0.json").is_file()
    calls = count_fits()
    files = train(data, tmp_path / "a", attempts=3, retry_above=1e-6)
    assert len(calls) == 2
    assert same_weights(files.out, single[int(np.argmin(shares))].out)

    count_fits(fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path / "b", attempts=3, retry_above=1e-6)
    calls = count_fits()
    train(data, tmp_path / "b", attempts=3, retry_above=1e-6, lr=0.02)
    assert len(calls) == 3
    assert leftovers(tmp_path / "b") == []


def test_a_run_that_stops_early_clears_the_later_attempts_of_a_killed_job(
    data, single, tmp_path, count_fits
) -> None:
    count_fits(fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path, attempts=3, retry_above=1e-6)
    (tmp_path / "checkpoint.attempt2.pt").write_bytes(b"left by a killed job")
    calls = count_fits()
    files = train(data, tmp_path, attempts=3, retry_above=1.0)
    assert calls == [] and same_weights(files.out, single[0].out)  # the finished first one
    assert leftovers(tmp_path) == []
