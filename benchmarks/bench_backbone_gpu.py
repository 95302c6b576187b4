"""Training throughput of a PSA network: fp32 vs bf16 autocast with channels_last.

Measures forward + backward + SGD step images/s of a PSA network (`--head`: cam,
affinity or seg, the segmentation network of train_seg) on random data (the PSA
setting: ResNet-38 at 448x448, batch 8) in three modes:

- fp32:     float32, TF32 off (the reference's arithmetic);
- tf32:     float32 storage, TF32 tensor cores for convs / matmuls;
- bf16-cl:  bfloat16 autocast and channels_last memory format.

    python benchmarks/bench_backbone_gpu.py                   # CUDA, 448x448, batch 8
    python benchmarks/bench_backbone_gpu.py --device cpu --size 64 --batch 2 --steps 2

Frozen layers and BatchNorm are handled exactly as in training (`PsaNet.train`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from psa_core.models import BACKBONES, HEADS, build_model
from psa_core.optim import param_groups
from psa_core.segmentation import pixel_cross_entropy

MODES = ("fp32", "tf32", "bf16-cl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet38d", choices=list(BACKBONES))
    parser.add_argument("--head", default="cam", choices=list(HEADS))
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (smoke run)")
    parser.add_argument("--size", type=int, default=448, help="square crop size in pixels")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per mode")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {MODES}")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {MODES}")
    return args


def _loss(out: torch.Tensor, head: str) -> torch.Tensor:
    if head == "cam":
        labels = (torch.rand_like(out, dtype=torch.float32) > 0.5).float()
        return F.multilabel_soft_margin_loss(out.float(), labels)
    if head == "seg":  # per-pixel cross-entropy against random labels (train_seg's loss)
        target = torch.randint(0, out.shape[1], (out.shape[0], *out.shape[2:]), device=out.device)
        return pixel_cross_entropy(out, target)
    # affinity: pull every pair towards 1 (the cost is the same as the real loss)
    return -torch.log(out.float() + 1e-5).mean()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mode(args: argparse.Namespace, mode: str, device: torch.device) -> dict:
    tf32 = mode == "tf32"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    channels_last = mode == "bf16-cl"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    torch.manual_seed(0)
    model = build_model(args.backbone, args.head).to(device, memory_format=memory_format)
    model.train()
    optimizer = torch.optim.SGD(param_groups(model, lr=1e-3, weight_decay=5e-4), lr=1e-3)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    x = x.contiguous(memory_format=memory_format)

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16-cl"):
            out = model(x)
        loss = _loss(out, args.head)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    loss = 0.0
    for _ in range(args.steps):
        loss = step()
    _sync(device)
    elapsed = time.perf_counter() - start
    result = {
        "mode": mode,
        "images_per_s": args.batch * args.steps / elapsed,
        "ms_per_step": 1000 * elapsed / args.steps,
        "last_loss": loss,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "bench_backbone_gpu: no CUDA device here (torch.cuda.is_available() is False); run it "
            "on a GPU node, or pass --device cpu --size 64 --batch 2 --steps 2 for a smoke run",
            file=sys.stderr,
        )
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{args.backbone}/{args.head} on {name}: {args.size}x{args.size}, batch {args.batch}, "
        f"{args.steps} steps after {args.warmup} warm-up (torch {torch.__version__})"
    )
    results = []
    for mode in args.modes:
        result = run_mode(args, mode, device)
        results.append(result)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the mode's model is gone; start the next one clean
        memory = (
            f", peak {result['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in result else ""
        )
        print(
            f"  {mode:8s} {result['images_per_s']:8.2f} images/s "
            f"({result['ms_per_step']:.0f} ms/step{memory}), loss {result['last_loss']:.4f}"
        )
    if len(results) > 1:
        base = results[0]["images_per_s"]
        for result in results[1:]:
            ratio = result["images_per_s"] / base
            print(f"  {result['mode']} / {results[0]['mode']}: {ratio:.2f}x")
    if args.json:
        meta = {k: v for k, v in vars(args).items() if k != "json"}
        payload = {"device": name, "torch": torch.__version__, "args": meta, "results": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
