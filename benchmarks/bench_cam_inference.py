"""Benchmark: batched multi-scale CAM inference against one view at a time.

`psa_core.cam.multiscale_cam` runs each scale's image and its flip as one
batch of two (4 forwards per image) and upsamples only the present classes.
The published code runs the 8 views one by one (batch 1) and masks every
class map of every view. This script times both on the same weights and
images, checks they agree (max abs difference <= --tolerance), and prints a
markdown section for benchmarks/RESULTS.md (or appends it with
--append-results FILE).

    python benchmarks/bench_cam_inference.py --backbone tiny --images 8 --size 320

Weights are random unless --weights names a state dict: speed does not depend
on them, and agreement is checked on whatever maps they give. TF32 is turned
off (unless --allow-tf32) so that both routes compute in true float32 on a
GPU and can agree to 1e-5.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from psa_core.cam import DEFAULT_SCALES, multiscale_cam
from psa_core.constants import VOC_CLASSES
from psa_core.device import resolve_device


def one_view_at_a_time_cam(
    model: torch.nn.Module,
    image: np.ndarray,
    label: np.ndarray,
    scales: Sequence[float] = DEFAULT_SCALES,
) -> np.ndarray:
    """The published route: 8 separate batch-1 forwards, every class masked per view."""
    device = next(model.parameters()).device
    height, width = image.shape[:2]
    pil_image = Image.fromarray(image)
    label = np.asarray(label, dtype=np.float32)[:, None, None]
    total = np.zeros((label.shape[0], height, width), dtype=np.float32)
    for scale in scales:
        size = (round(width * scale), round(height * scale))
        scaled = np.asarray(pil_image.resize(size, resample=Image.Resampling.BICUBIC))
        for flip in (False, True):
            view = np.ascontiguousarray(scaled[:, ::-1] if flip else scaled)
            x = torch.from_numpy(view.transpose(2, 0, 1).copy()).float()[None].to(device)
            with torch.inference_mode():
                cam = model.cam(model.normalization(x))
                cam = F.interpolate(cam, (height, width), mode="bilinear", align_corners=False)
            cam = cam[0].cpu().numpy()
            if flip:
                cam = cam[:, :, ::-1]
            total += cam * label
    return total / (total.max(axis=(1, 2), keepdims=True) + 1e-5)


def make_inputs(
    count: int, size: int, num_classes: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """VOC-like inputs: long side `size`, aspect 4:3 either way, 1-3 present classes."""
    rng = np.random.default_rng(seed)
    inputs = []
    for index in range(count):
        short = round(size * 3 / 4)
        height, width = (short, size) if index % 2 == 0 else (size, short)
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([xx * 255 / width, yy * 255 / height, 128 + 0 * xx], axis=-1)
        image = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        label = np.zeros(num_classes, dtype=np.float32)
        label[rng.choice(num_classes, rng.integers(1, 4), replace=False)] = 1
        inputs.append((image, label))
    return inputs


def timed(
    run: Callable[[np.ndarray, np.ndarray], np.ndarray],
    inputs: list[tuple[np.ndarray, np.ndarray]],
    device: torch.device,
    repeats: int,
) -> tuple[float, list[np.ndarray]]:
    """Best wall time of `repeats` passes over all inputs, and the last pass's outputs."""
    best = float("inf")
    outputs: list[np.ndarray] = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        outputs = [run(image, label) for image, label in inputs]
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, outputs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _shown_args(argv: Sequence[str] | None) -> str:
    """The command-line arguments, without --append-results (a local path)."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    shown: list[str] = []
    skip = False
    for token in tokens:
        if skip:
            skip = False
        elif token == "--append-results":
            skip = True
        elif not token.startswith("--append-results="):
            shown.append(token)
    return " ".join(shown)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="tiny", help="build_model backbone (default tiny)")
    parser.add_argument("--weights", type=Path, help="optional CAM state dict to load")
    parser.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    parser.add_argument("--size", type=int, default=320, help="long image side (default 320)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes, best kept")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="max abs difference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-tf32", action="store_true", help="leave TF32 on (GPU)")
    parser.add_argument("--append-results", type=Path, help="append the markdown to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)

    from psa_core.models import build_model  # the model registry (docs/design.md §3)

    state = None
    num_classes = len(VOC_CLASSES)
    if args.weights:
        from psa_core.io import load_torch

        state = load_torch(args.weights)
        num_classes = state["fc8.weight"].shape[0]  # the trained classifier's K
    model = build_model(args.backbone, "cam", num_classes=num_classes)
    if state is not None:
        model.load_state_dict(state, strict=True)
    model = model.to(device).eval()

    inputs = make_inputs(args.images, args.size, num_classes, args.seed)

    def batched(image: np.ndarray, label: np.ndarray) -> np.ndarray:
        return multiscale_cam(model, image, label)

    def single(image: np.ndarray, label: np.ndarray) -> np.ndarray:
        return one_view_at_a_time_cam(model, image, label)

    timed(batched, inputs[:1], device, 1)  # warm-up: allocator, cuDNN autotune, thread pool
    timed(single, inputs[:1], device, 1)
    t_single, out_single = timed(single, inputs, device, args.repeats)
    t_batched, out_batched = timed(batched, inputs, device, args.repeats)

    diff = max(float(np.abs(a - b).max()) for a, b in zip(out_batched, out_single, strict=True))
    ok = diff <= args.tolerance
    ips_single, ips_batched = args.images / t_single, args.images / t_batched

    short = round(args.size * 3 / 4)
    lines = [
        "## CAM inference: batched flip pairs vs one view at a time",
        "",
        f"`python benchmarks/bench_cam_inference.py {_shown_args(argv)}`"
        f" — {datetime.date.today().isoformat()}, torch {torch.__version__}, "
        f"{_device_name(device)}.",
        "",
        f"Backbone `{args.backbone}` ({'weights ' + str(args.weights) if args.weights else 'random weights'}), "
        f"{args.images} images of {args.size}x{short} / {short}x{args.size}, "
        f"{num_classes} classes with 1-3 present, scales {DEFAULT_SCALES} with flips "
        f"(8 views), best of {args.repeats} passes.",
        "",
        "| route | forwards / image | images / s | ms / image |",
        "|---|---:|---:|---:|",
        f"| one view at a time (batch 1) | 8 | {ips_single:.2f} | {1000 / ips_single:.1f} |",
        f"| `multiscale_cam` (flip pairs, batch 2) | 4 | {ips_batched:.2f} | "
        f"{1000 / ips_batched:.1f} |",
        "",
        f"Speed-up {ips_batched / ips_single:.2f}x; max |difference| over all maps "
        f"{diff:.2e} ({'within' if ok else 'ABOVE'} the {args.tolerance:g} tolerance).",
        "",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    if args.append_results:
        with args.append_results.open("a") as f:
            f.write("\n" + markdown)
    if not ok:
        print(f"FAIL: outputs differ by {diff:.2e} > {args.tolerance:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
