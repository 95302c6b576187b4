"""What a job spends before its first image (issue 18, item 3), phase by phase.

Each repeat runs a fresh Python process that times, in order:

    cli        `import psa_core.cli` (what every `psa <stage>` job imports first)
    torch      `import torch` (the stages import it lazily)
    cuda       `torch.cuda.init()` and a first tensor on the GPU (only where there is one)
    build      the inference network with its random initialisation, then its
               checkpoint loaded (how `create_model(checkpoint_path=...)` did it before)
    load       `create_model(checkpoint_path=...)` now: built without initial weights
               (meta device), the checkpoint fills every tensor

`build` and `load` give the same model; their ratio is the saving. Each is
timed in processes of its own, alternating; the figures are medians over
`--repeats` processes of each, side by side in one run.

    python benchmarks/bench_startup.py --backbones tiny resnet38d --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import psa_core.cli  # noqa: F401
t1 = time.perf_counter()
import torch
t2 = time.perf_counter()
cuda = None
if torch.cuda.is_available():
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    cuda = time.perf_counter() - t2
    t2 = time.perf_counter()
from psa_core.models import build_model, create_model, load_weights
backbone, head, path, how = sys.argv[1:5]
t3 = time.perf_counter()
if how == "build":
    model = build_model(backbone, head, num_classes=20)
    load_weights(model, path)
else:
    model = create_model(backbone, head, num_classes=20, checkpoint_path=path)
print(json.dumps({"cli": t1 - t0, "torch": t2 - t1, "cuda": cuda,
                  how: time.perf_counter() - t3}))
"""


def _weights(backbone: str, head: str, folder: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from psa_core.io import save_torch
    from psa_core.models import build_model

    path = folder / f"{backbone}-{head}.pth"
    save_torch(path, build_model(backbone, head, num_classes=20).state_dict())
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["tiny", "resnet38d"])
    parser.add_argument("--head", default="cam", choices=["cam", "affinity", "seg"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print("| backbone | cli import | torch import | CUDA init | build + load (before) "
          "| load (now) | ratio |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        for backbone in args.backbones:
            path = _weights(backbone, args.head, Path(tmp))
            runs: dict[str, list[float]] = {}
            for _ in range(args.repeats):
                for how in ("build", "load"):
                    out = subprocess.run(
                        [sys.executable, "-c", CHILD, backbone, args.head, str(path), how],
                        cwd=REPO, capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    for key, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
                        if value is not None:
                            runs.setdefault(key, []).append(value)
            med = {key: statistics.median(values) for key, values in runs.items()}
            med.setdefault("cuda", None)
            cuda = f"{med['cuda']:.2f} s" if med["cuda"] is not None else "–"
            print(
                f"| {backbone} | {med['cli']:.2f} s | {med['torch']:.2f} s | {cuda} "
                f"| {med['build']:.2f} s | {med['load']:.2f} s "
                f"| {med['build'] / med['load']:.1f}× |"
            )


if __name__ == "__main__":
    main()
