"""The resumable training loop shared by every training stage (docs/design.md §1.1, §1.3).

`train` knows no stage: it takes a model, a dataset, a `loss_fn(model,
batch) -> (loss, parts)` and the stage's settings section; the stages'
library modules (`psa_core.cam.fit_cam`, `psa_core.affinity.fit_affinity`,
`psa_core.segmentation.fit_seg`) bring their datasets and losses. It runs SGD on
the four parameter groups of docs/design.md §1.1 with the poly schedule, stepped
once per optimiser step.

Determinism and resume
----------------------
- Training datasets are indexed by `(epoch, index)` keys (see
  `EpochBatchSampler`); a sample's augmentation comes from
  `sample_rng(seed, epoch, index)` and each epoch's order from
  `epoch_order(seed, epoch, n)`. What a step sees therefore depends neither on
  where a run was interrupted nor on `num_workers`.
- One DataLoader serves the whole run (`training_loader` over a
  `RunBatchSampler`): its workers start once, and prefetch across epoch ends.
- The last incomplete batch of an epoch is dropped, as in the reference
  (`drop_last=True`), so every step has `batch_size` samples and
  `max_step = epochs * (len(dataset) // batch_size)`.
- A checkpoint (model, optimiser, scheduler, AMP scaler, position, torch CPU
  and CUDA RNG states, the run's fingerprint) is written atomically at every
  epoch end, every `checkpoint_every` steps if set, and on SIGTERM / SIGINT:
  the handler only sets a flag, the loop finishes the current step, saves and
  raises `TrainingInterrupted` (exit code 128 + signal: 143 for SIGTERM, 130
  for SIGINT). A second signal aborts at once, keeping the last checkpoint.
  No global numpy / Python RNG is used, so none is saved.
- Calling `train` again with the checkpoint present continues from it; on CPU
  the final weights are bit-identical to an uninterrupted run. A checkpoint
  whose fingerprint (`result_settings`: the section's values but the speed-only ones,
  seed, AMP dtype, model layout, dataset names / labels / augmentation,
  caller's `config`) differs is refused with a PsaError.
- On completion the weights (`model.state_dict()` only) are written
  atomically to `out_weights`, the log is renamed from `<log_csv>.partial` to
  `log_csv`, and only then is the checkpoint deleted: both outputs exist
  exactly when training finished, and a kill at any point before leaves a
  checkpoint to resume from.

Log
---
The log grows as `<log_csv>.partial` while training runs (it survives a kill,
and a workflow engine that deletes a failed job's outputs); `log_csv` gets one
row every `log_every` steps (means over those steps):
step (global, 1-based), epoch (1-based), phase "train", loss, lr (group 0, the
value used for that step), images_per_s, elapsed_s, then the loss parts. With
a validation set, each epoch end adds a row with phase "val" and the mean
validation loss (and parts). On resume the rows past the checkpoint are
dropped and the log continues.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from psa_core import io
from psa_core.device import autocast_dtype, resolve_device
from psa_core.errors import PsaError, TrainingInterrupted
from psa_core.optim import param_groups, poly_scheduler
from psa_core.settings import TrainSettings, as_dict

log = logging.getLogger("psa.train")

CHECKPOINT_FORMAT = "psa-train-checkpoint/1"
"""Tag stored in every checkpoint; a file without it is not ours."""

_ORDER_STREAM = 1
_SAMPLE_STREAM = 2
# Stream tags lead the seed tuples: numpy's SeedSequence pads entropy with
# zeros, so (seed, epoch) and (seed, epoch, 0) would otherwise be one stream.

PREFETCH_BATCHES = 4
"""Batches each DataLoader worker keeps ready (its prefetch_factor; torch's default is 2):
the deeper queue rides out a batch of slow samples (large images)."""

SPEED_ONLY_SETTINGS = ("num_workers", "image_cache_mb")
"""Settings that change the speed, never the result: not part of a run's fingerprint,
so a run may resume with other values."""


def result_settings(settings: Any) -> dict[str, Any]:
    """A training section's values that can change its result (all but
    `SPEED_ONLY_SETTINGS`): the settings part of a run's fingerprint."""
    return {k: v for k, v in as_dict(settings).items() if k not in SPEED_ONLY_SETTINGS}


LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping[str, Any]]]
"""`loss_fn(model, batch) -> (scalar loss, {part name: scalar})`; `batch` is
what the DataLoader collates, already moved to the training device."""


# -- sampling ---------------------------------------------------------------


def partial_log_path(log_csv: str | os.PathLike) -> Path:
    """Where the log of a running (or interrupted) training grows."""
    return Path(f"{log_csv}.partial")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation RNG of sample `index` in `epoch` (0-based)."""
    return np.random.default_rng((_SAMPLE_STREAM, seed, epoch, index))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of `epoch`: a permutation of range(n), (n,) int64."""
    return np.random.default_rng((_ORDER_STREAM, seed, epoch)).permutation(n)


class EpochBatchSampler:
    """Batches of `(epoch, index)` keys for one epoch, from batch `start` on.

    Full batches only (the last incomplete one is dropped).
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0):
        self.n, self.batch_size, self.seed, self.epoch, self.start = (
            n,
            batch_size,
            seed,
            epoch,
            start,
        )

    def __len__(self) -> int:
        return max(0, self.n // self.batch_size - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.seed, self.epoch, self.n)
        bs = self.batch_size
        for b in range(self.start, self.n // bs):
            yield [(self.epoch, int(i)) for i in order[b * bs : (b + 1) * bs]]


class RunBatchSampler:
    """The batches of epochs `epoch` .. `epochs` - 1, from batch `start` of the first on:
    `EpochBatchSampler`s in a row, for one DataLoader over the rest of a run."""

    def __init__(self, n: int, batch_size: int, seed: int, epochs: int, epoch: int, start: int):
        self.epochs = [
            EpochBatchSampler(n, batch_size, seed, e, start if e == epoch else 0)
            for e in range(epoch, epochs)
        ]

    def __len__(self) -> int:
        return sum(len(sampler) for sampler in self.epochs)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for sampler in self.epochs:
            yield from sampler


def training_loader(
    dataset: Dataset, batch_sampler: Any, num_workers: int, device: torch.device
) -> DataLoader:
    """The DataLoader of a training run: `num_workers` processes, each `PREFETCH_BATCHES`
    ahead; batches in pinned memory when `device` is CUDA (copied with non_blocking).

    On Linux the workers are forked (torch's default there before Python 3.14), so
    they share a dataset's `psa_core.decoded_cache.DecodedCache`.
    """
    workers: dict[str, Any] = {}
    if num_workers:
        workers["prefetch_factor"] = PREFETCH_BATCHES
        if sys.platform.startswith("linux"):
            workers["multiprocessing_context"] = multiprocessing.get_context("fork")
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # leaves the global RNG to dropout
        **workers,
    )


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able value (dataset fingerprints)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- optimiser ----------------------------------------------------------------


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    max_step: int,
    poly_power: float,
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LRScheduler]:
    """SGD on the four parameter groups of docs/design.md §1.1 with the poly schedule.

    Momentum: the reference's `PolyOptimizer` calls `SGD(params, lr,
    weight_decay)`, so its weight decay lands in SGD's momentum slot (an
    effective momentum of 5e-4, i.e. none to speak of). We default to 0 (plain
    SGD, what the code evidently meant); pass 5e-4 to mimic it exactly.
    """
    groups = param_groups(model, lr, weight_decay)
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return optimizer, poly_scheduler(optimizer, max_step, power=poly_power)


# -- the loop -----------------------------------------------------------------


class _StopFlag:
    """SIGTERM / SIGINT handlers that ask the loop to stop after this step.

    Installed only in the main thread (Python allows no other); the previous
    handlers come back on exit.
    """

    def __init__(self, run: _Run):
        self.signum: int | None = None
        self.step = run.global_step
        self._checkpoint_path = run.checkpoint_path
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second signal: stop now, keep the last checkpoint
            raise TrainingInterrupted(signum, self._checkpoint_path, self.step, saved=False)
        self.signum = signum

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _CsvLog:
    """The progressive CSV log (see the module docstring)."""

    BASE = ("step", "epoch", "phase", "loss", "lr", "images_per_s", "elapsed_s")

    def __init__(self, path: Path):
        self.path = Path(path)
        self.columns: list[str] | None = None

    def start(self, resume: Mapping[str, int] | None) -> None:
        """Start a new log, or keep the rows up to the resumed position."""
        rows: list[dict[str, str]] = []
        if resume is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames) if reader.fieldnames else None
                for row in reader:
                    try:
                        step, epoch = int(row["step"]), int(row["epoch"])
                    except (KeyError, TypeError, ValueError):
                        continue
                    if row.get("phase") == "val":
                        # a val row of epoch e+1 exists only once epoch e is complete
                        keep = epoch <= resume["epoch"]
                    else:
                        keep = step <= resume["global_step"]
                    if keep:
                        rows.append(row)
        with io.atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            if self.columns:
                writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

    def append(self, row: Mapping[str, Any]) -> None:
        new = self.columns is None
        if new:
            self.columns = list(self.BASE) + [k for k in row if k not in self.BASE]
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0])
    if isinstance(batch, Mapping) and batch:
        return _batch_len(next(iter(batch.values())))
    raise TypeError("cannot tell the batch size of the collated batch")


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _mean_parts(total: Mapping[str, float], count: float) -> dict[str, float]:
    return {k: v / max(count, 1) for k, v in total.items()}


def _item(value: Any) -> float:
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


def _check_args(
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    num_workers: int,
    log_every: int,
    checkpoint_every: int,
) -> None:
    for name, value, low in (
        ("epochs", epochs, 1),
        ("batch_size", batch_size, 1),
        ("seed", seed, 0),
        ("num_workers", num_workers, 0),
        ("log_every", log_every, 1),
        ("checkpoint_every", checkpoint_every, 0),
    ):
        if int(value) != value or value < low:
            raise PsaError(f"{name} {value}: must be an integer >= {low}")
    if not lr > 0:
        raise PsaError(f"lr {lr}: must be positive")


def train(
    model: nn.Module,
    dataset: Dataset,
    loss_fn: LossFn,
    settings: TrainSettings,
    *,
    seed: int = 0,
    device: str | torch.device = "auto",
    out_weights: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    log_csv: str | os.PathLike,
    val_dataset: Dataset | None = None,
    restart_on_change: bool = False,
    log_every: int = 10,
    checkpoint_every: int = 0,
    progress: bool = True,
    amp_dtype: str | torch.dtype | None = None,
    config: Mapping[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
    before_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train `model` with SGD + poly schedule; resumable (module docstring).

    Args:
        model: has `new_modules()` for the parameter groups; its `train()`
            keeps batch norm frozen. Moved to `device`, left in train mode.
        dataset: keyed by `(epoch, index)` tuples (see `EpochBatchSampler`);
            an optional `fingerprint()` dict joins the run's fingerprint.
        loss_fn: `loss_fn(model, batch) -> (loss, parts)`.
        settings: the stage's section (`psa_core.settings.TrainSettings`):
            epochs, batch size, the optimiser (docs/design.md §1.1; see
            `build_optimizer` on momentum) and the DataLoader workers
            (`auto`: torch's thread count - 1; `psa --threads` sets that
            count to the job's threads).
        seed: data order, augmentation and the torch RNG (dropout).
        out_weights: final `model.state_dict()` (.pt), written last.
        checkpoint_path: resume checkpoint; deleted once `out_weights` exists.
        log_csv: the CSV log.
        val_dataset: plain-indexed; its mean loss is logged every epoch end.
        restart_on_change: a checkpoint of other settings is deleted and
            training starts over, instead of a PsaError.
        log_every: steps per CSV row / progress line.
        checkpoint_every: also checkpoint every this many steps (0: epoch
            ends and signals only).
        progress: a tqdm bar when stderr is a terminal, else a log line
            every `log_every` steps; False for neither.
        amp_dtype: None, "bfloat16" or "float16" (with a gradient scaler).
        config: extra values that define the run (e.g. the initial weights
            file); part of the fingerprint.
        on_step: called with the global step after each optimiser step.
        before_step: called with (the 0-based index of the step about to run, the
            run's total steps) before each optimiser step, so a resumed run calls it
            first with the step it continues from.

    Returns:
        {"steps", "epochs", "final_loss", "elapsed_s", "resumed_from_step"}.

    Raises:
        TrainingInterrupted: on SIGTERM / SIGINT, after saving the checkpoint.
        PsaError: bad arguments, a foreign checkpoint, a diverged loss.
    """
    epochs, batch_size = settings.epochs, settings.batch_size
    num_workers = settings.loader_workers(torch.get_num_threads())
    _check_args(epochs, batch_size, settings.lr, seed, num_workers, log_every, checkpoint_every)
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    amp = autocast_dtype(amp_dtype)
    n = len(dataset)
    steps_per_epoch = n // batch_size
    if steps_per_epoch == 0:
        raise PsaError(
            f"batch_size {batch_size} is larger than the training set ({n} images); lower it"
        )
    fingerprint = {
        "settings": result_settings(settings),
        "seed": seed,
        "amp_dtype": str(amp),
        "model": digest([(k, list(v.shape)) for k, v in model.state_dict().items()]),
        "dataset": dataset.fingerprint() if hasattr(dataset, "fingerprint") else {"len": n},
        "config": dict(config or {}),
    }
    run = _Run(
        model=model.to(device),
        dataset=dataset,
        loss_fn=loss_fn,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
        amp=amp,
        checkpoint_path=Path(checkpoint_path),
        fingerprint=json.loads(json.dumps(fingerprint, sort_keys=True, default=str)),
        restart_on_change=restart_on_change,
        num_workers=num_workers,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        progress=progress,
        on_step=on_step,
        before_step=before_step,
    )
    model.train()
    run.optimizer, run.scheduler = build_optimizer(
        model, max_step=run.max_step, **settings.optimizer_options()
    )
    run.scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    # fork_rng: seeding for dropout must not leak into the caller's RNG.
    with torch.random.fork_rng(devices=run.cuda_devices), _StopFlag(run) as stop:
        run.stop = stop
        resumed = run.restore()
        stop.step = run.global_step
        run.csv = _CsvLog(partial_log_path(log_csv))
        run.csv.start({"epoch": run.epoch, "global_step": run.global_step} if resumed else None)
        run.log_start(resumed, settings.lr)
        with run.progress_bar(), run.loading():
            while run.epoch < epochs:
                run.train_epoch()
                if stop.signum is not None:
                    raise run.interrupted()
                if val_dataset is not None:
                    val = _validate(run, val_dataset)
                    if val is None:
                        raise run.interrupted()
                    run.log_val(val)
                run.epoch, run.batch = run.epoch + 1, 0
                if run.epoch < epochs:
                    run.save_checkpoint()
        io.save_torch(out_weights, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        os.replace(partial_log_path(log_csv), log_csv)
        run.checkpoint_path.unlink(missing_ok=True)

    total = run.elapsed()
    log.info(
        "training done: %d steps in %s (%d in this session); weights written to %s",
        run.max_step,
        _hms(total),
        run.max_step - run.resumed_from,
        out_weights,
    )
    return {
        "steps": run.max_step,
        "epochs": epochs,
        "final_loss": run.last_loss,
        "elapsed_s": total,
        "resumed_from_step": run.resumed_from,
    }


@dataclasses.dataclass
class _Run:
    """The state of one training call: settings, position, timers, log window."""

    model: nn.Module
    dataset: Dataset
    loss_fn: LossFn
    epochs: int
    batch_size: int
    seed: int
    device: torch.device
    amp: torch.dtype | None
    checkpoint_path: Path
    fingerprint: dict[str, Any]
    restart_on_change: bool
    num_workers: int
    log_every: int
    checkpoint_every: int
    progress: bool
    on_step: Callable[[int], None] | None
    before_step: Callable[[int, int], None] | None
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    stop: Any = None
    batches: Iterator[Any] | None = None  # the run's one DataLoader iterator (`loading`)
    csv: Any = None
    bar: Any = None
    # position: the next step is batch `batch` of epoch `epoch` (0-based)
    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    resumed_from: int = 0
    elapsed_before: float = 0.0
    session_start: float = dataclasses.field(default_factory=time.perf_counter)
    train_time: float = 0.0
    session_steps: int = 0
    last_loss: float = float("nan")
    window: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.dataset) // self.batch_size

    @property
    def max_step(self) -> int:
        return self.epochs * self.steps_per_epoch

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.session_start

    @property
    def cuda_devices(self) -> list[int]:
        """The one CUDA device the job trains on (its RNG is forked and checkpointed), or []."""
        if self.device.type != "cuda":
            return []
        # Only the job's own device: touching every visible GPU would open a
        # context on each, on cards other jobs have claimed (psa_core.device).
        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    # -- checkpoint ----------------------------------------------------------

    def restore(self) -> bool:
        """Load the checkpoint if there is one (True), else seed torch (False)."""
        checkpoint = _load_checkpoint(
            self.checkpoint_path, self.fingerprint, discard_foreign=self.restart_on_change
        )
        if checkpoint is None:
            torch.manual_seed(self.seed)
            return False
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler.is_enabled() and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["torch_rng"])
        cuda_rng = checkpoint.get("cuda_rng") or []
        if self.cuda_devices and len(cuda_rng) == len(self.cuda_devices):
            for state, index in zip(cuda_rng, self.cuda_devices, strict=True):
                torch.cuda.set_rng_state(state, index)
        elif self.cuda_devices:
            log.warning("CUDA RNG state not restored (device count changed): dropout differs")
        self.epoch, self.batch = int(checkpoint["epoch"]), int(checkpoint["batch"])
        self.global_step = self.resumed_from = int(checkpoint["global_step"])
        self.elapsed_before = float(checkpoint["elapsed_s"])
        return True

    def save_checkpoint(self) -> None:
        io.save_torch(
            self.checkpoint_path,
            {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
                "epoch": self.epoch,
                "batch": self.batch,
                "global_step": self.global_step,
                "elapsed_s": self.elapsed(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": [torch.cuda.get_rng_state(index) for index in self.cuda_devices],
            },
        )

    def interrupted(self) -> TrainingInterrupted:
        """Save the checkpoint and make the exception to raise."""
        self.save_checkpoint()
        signum = self.stop.signum
        log.warning(
            "%s received: checkpoint saved at step %d/%d to %s; rerun to resume",
            signal.Signals(signum).name,
            self.global_step,
            self.max_step,
            self.checkpoint_path,
        )
        return TrainingInterrupted(signum, self.checkpoint_path, self.global_step)

    # -- training ------------------------------------------------------------

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """`self.batches`: every remaining batch of the run, from one DataLoader whose
        workers start here and are shut down on exit."""
        if self.epoch < self.epochs:
            sampler = RunBatchSampler(
                len(self.dataset), self.batch_size, self.seed, self.epochs, self.epoch, self.batch
            )
            loader = training_loader(self.dataset, sampler, self.num_workers, self.device)
            self.batches = iter(loader)
        try:
            yield
        finally:
            self.batches = None  # the last reference: shuts the workers down

    def train_epoch(self) -> None:
        """Run the rest of the current epoch, or up to a stop request.

        Takes exactly the epoch's remaining batches from `self.batches`, so the
        next epoch starts on its own first batch.
        """
        while self.batch < self.steps_per_epoch and self.stop.signum is None:
            t0 = time.perf_counter()
            try:
                batch = next(self.batches)
            except Exception:
                if self.stop.signum is not None:  # workers killed by the same signal
                    break
                raise
            self.step(batch, t0)

    def step(self, batch: Any, t0: float) -> None:
        """One optimiser step on `batch`, then log / checkpoint as due."""
        if self.before_step is not None:
            self.before_step(self.global_step, self.max_step)
        step_lr = self.optimizer.param_groups[0]["lr"]
        loss, parts = _train_step(self, _to_device(batch, self.device))
        self.scheduler.step()
        loss_value = _item(loss)
        if not math.isfinite(loss_value):
            raise PsaError(
                f"training diverged: loss {loss_value} at step {self.global_step + 1}; lower lr "
                f"or check the labels, then delete {self.checkpoint_path} to start over"
            )
        self.batch += 1
        self.global_step += 1
        self.stop.step = self.global_step
        self.last_loss = loss_value
        dt = time.perf_counter() - t0
        self.train_time += dt
        self.session_steps += 1
        w = self.window
        w["steps"] = w.get("steps", 0) + 1
        w["time"] = w.get("time", 0.0) + dt
        w["loss"] = w.get("loss", 0.0) + loss_value
        w.setdefault("parts", {})
        for k, v in parts.items():
            w["parts"][k] = w["parts"].get(k, 0.0) + _item(v)
        if self.bar is not None:
            self.bar.update(self.batch_size)
        if self.global_step % self.log_every == 0 or self.batch == self.steps_per_epoch:
            self.log_window(step_lr)
        if self.on_step is not None:
            self.on_step(self.global_step)
        if (
            self.checkpoint_every
            and self.global_step % self.checkpoint_every == 0
            and self.batch < self.steps_per_epoch  # epoch ends save anyway
        ):
            self.save_checkpoint()

    # -- reporting -----------------------------------------------------------

    def log_window(self, step_lr: float) -> None:
        """A CSV row and a progress update for the steps since the last one."""
        w, self.window = self.window, {}
        steps = w["steps"]
        ips = steps * self.batch_size / max(w["time"], 1e-9)
        row = {
            "step": self.global_step,
            "epoch": self.epoch + 1,
            "phase": "train",
            "loss": w["loss"] / steps,
            "lr": step_lr,
            "images_per_s": ips,
            "elapsed_s": self.elapsed(),
            **_mean_parts(w["parts"], steps),
        }
        self.csv.append(row)
        if self.bar is not None:
            self.bar.set_postfix(
                epoch=f"{self.epoch + 1}/{self.epochs}",
                loss=f"{row['loss']:.4f}",
                lr=f"{step_lr:.3g}",
            )
        elif self.progress:
            eta = (self.max_step - self.global_step) * self.train_time / self.session_steps
            log.info(
                "step %d/%d (epoch %d/%d) loss %.4f lr %.4g %.1f img/s ETA %s",
                self.global_step,
                self.max_step,
                self.epoch + 1,
                self.epochs,
                row["loss"],
                step_lr,
                ips,
                _hms(eta),
            )

    def log_val(self, val: Mapping[str, float]) -> None:
        self.csv.append(
            {
                "step": self.global_step,
                "epoch": self.epoch + 1,
                "phase": "val",
                "elapsed_s": self.elapsed(),
                **val,
            }
        )
        log.info("epoch %d/%d: validation loss %.4f", self.epoch + 1, self.epochs, val["loss"])

    def log_start(self, resumed: bool, lr: float) -> None:
        n = len(self.dataset)
        log.info(
            "training: %d images, batch size %d (effective %d; %d image(s) dropped per epoch), "
            "%d steps/epoch x %d epochs = %d steps, lr %g, device %s, seed %d, amp %s, workers %d",
            n,
            self.batch_size,
            self.batch_size,
            n - self.steps_per_epoch * self.batch_size,
            self.steps_per_epoch,
            self.epochs,
            self.max_step,
            lr,
            self.device,
            self.seed,
            self.amp,
            self.num_workers,
        )
        if resumed:
            log.info(
                "resuming from %s at step %d/%d (epoch %d, batch %d)",
                self.checkpoint_path,
                self.global_step,
                self.max_step,
                self.epoch + 1,
                self.batch,
            )
        else:
            log.info("starting from scratch (no checkpoint at %s)", self.checkpoint_path)

    @contextlib.contextmanager
    def progress_bar(self) -> Iterator[None]:
        """A tqdm bar (images/s, ETA) when stderr is a terminal; else nothing."""
        if not (self.progress and sys.stderr.isatty()):
            yield
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.bar = tqdm(
            total=self.max_step * self.batch_size,
            initial=self.global_step * self.batch_size,
            unit="img",
            dynamic_ncols=True,
            smoothing=0.1,
        )
        try:
            with logging_redirect_tqdm():
                yield
        finally:
            self.bar.close()
            self.bar = None


def _train_step(run: _Run, batch: Any) -> tuple[torch.Tensor, Mapping[str, Any]]:
    with torch.autocast(run.device.type, dtype=run.amp, enabled=run.amp is not None):
        loss, parts = run.loss_fn(run.model, batch)
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler.is_enabled():
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        run.optimizer.step()
    return loss.detach(), parts


def _validate(run: _Run, dataset: Dataset) -> dict[str, float] | None:
    """Mean loss (and parts) over `dataset` in eval mode; None if a signal came."""
    loader = DataLoader(
        dataset,
        batch_size=run.batch_size,
        shuffle=False,
        num_workers=run.num_workers,
        pin_memory=run.device.type == "cuda",
        generator=torch.Generator(),
    )
    total, parts_total, count = 0.0, {}, 0
    run.model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                if run.stop.signum is not None:
                    return None
                b = _batch_len(batch)
                with torch.autocast(run.device.type, dtype=run.amp, enabled=run.amp is not None):
                    loss, parts = run.loss_fn(run.model, _to_device(batch, run.device))
                total += _item(loss) * b
                for k, v in parts.items():
                    parts_total[k] = parts_total.get(k, 0.0) + _item(v) * b
                count += b
    except Exception:
        if run.stop.signum is not None:
            return None
        raise
    finally:
        run.model.train()
    return {"loss": total / max(count, 1), **_mean_parts(parts_total, count)}


def _load_checkpoint(
    path: Path, fingerprint: Mapping[str, Any], discard_foreign: bool = False
) -> dict[str, Any] | None:
    """The checkpoint at `path` if there is one and it belongs to this run.

    A checkpoint of other settings is an error, or with `discard_foreign`
    (the workflow, where a changed parameter means a new run) deleted.
    """
    if not path.is_file():
        return None
    checkpoint = io.load_torch(path, what="training checkpoint")
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise PsaError(f"{path}: not a psa training checkpoint; delete it or choose another path")
    saved = json.loads(checkpoint["fingerprint"])
    if saved != fingerprint:
        diffs = _differences(saved, fingerprint)
        if discard_foreign:
            log.warning("%s: settings changed (%s); starting over", path, "; ".join(diffs))
            path.unlink()
            return None
        raise PsaError(
            f"{path}: checkpoint of a different training run ({'; '.join(diffs)}); delete it to "
            "start over, or restore the earlier settings to resume it"
        )
    return checkpoint


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two run fingerprints, one phrase per key: the settings value
    by value (`settings.lr: 0.1 -> 0.05`), other groups by name (`dataset: names changed`)."""
    phrases = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) or isinstance(b, dict):
            a, b = a or {}, b or {}
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if key == "settings":
                phrases += [f"settings.{k}: {a.get(k)} -> {b.get(k)}" for k in changed]
            else:
                phrases.append(f"{key}: {', '.join(changed)} changed")
        else:
            phrases.append(f"{key}: {a} -> {b}")
    return phrases
