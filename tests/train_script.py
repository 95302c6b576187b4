"""A CAM training run as a separate process, for the SIGTERM test.

    python tests/train_script.py DATA_ROOT OUT_DIR EPOCHS

Trains the tiny model on the dataset `train_helpers.write_dataset` made in
DATA_ROOT (names and labels in DATA_ROOT/labels.json), writing
OUT_DIR/{weights.pt,checkpoint.pt,log.csv}; exits with
`TrainingInterrupted.exit_code` when stopped by a signal.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from psa_core.cam import fit_cam  # noqa: E402
from psa_core.settings import CamSettings  # noqa: E402
from psa_core.training import TrainingInterrupted  # noqa: E402
from tests.train_helpers import read_labels_json, tiny_model  # noqa: E402


def main(root: Path, out: Path, epochs: int) -> int:
    torch.set_num_threads(1)  # same arithmetic in every run
    names, labels = read_labels_json(root / "labels.json")
    try:
        fit_cam(
            tiny_model(),
            root,
            names,
            labels,
            CamSettings(crop_size=32, resize_long=(24, 40), epochs=epochs, batch_size=4, lr=0.01),
            out_weights=out / "weights.pt",
            checkpoint_path=out / "checkpoint.pt",
            log_csv=out / "log.csv",
            seed=3,
            device="cpu",
            log_every=1,
            progress=False,
        )
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))
