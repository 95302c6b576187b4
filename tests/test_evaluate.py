"""psa_core.evaluate: the CAM threshold sweep and its report files."""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from psa_core.cam import cams_to_segmentation
from psa_core.errors import PsaError
from psa_core.evaluate import (
    CamThresholdSweep,
    classifier_check,
    evaluate_cams,
    final_loss,
    last_epoch_losses,
    summary_rows,
    write_cam_report,
)
from psa_core.metrics import confusion_matrix, iou


def hand_items():
    # Image A: one present class (id 0 -> index 1); the 255 pixel is ignored.
    cams_a = np.array([[[0.2, 0.5, 0.7, 0.9]]], dtype=np.float32)
    gt_a = np.array([[0, 1, 1, 255]], dtype=np.uint8)
    # Image B: classes 0 and 1 (indices 1 and 2).
    cams_b = np.array([[[0.4, 0.1, 0.8]], [[0.5, 0.7, 0.2]]], dtype=np.float32)
    gt_b = np.array([[2, 2, 0]], dtype=np.uint8)
    return [(cams_a, np.array([0]), gt_a), (cams_b, np.array([0, 1]), gt_b)]


def test_evaluate_cams_hand_computed():
    # t = 0.3: A -> [0, 1, 1, (1)], B -> [2, 2, 1]
    #   conf [[1,1,0],[0,2,0],[0,0,2]] -> IoU 1/2, 2/3, 1
    # t = 0.6: A -> [0, 0, 1, (1)], B -> [0, 2, 1]
    #   conf [[1,1,0],[1,1,0],[1,0,1]] -> IoU 1/4, 1/3, 1/2
    result = evaluate_cams(
        hand_items(), num_classes=3, thresholds=[0.6, 0.3], published_threshold=0.6
    )

    assert result["num_images"] == 2
    assert result["num_classes"] == 3
    assert [row["threshold"] for row in result["thresholds"]] == [0.3, 0.6]
    low, high = result["thresholds"]
    np.testing.assert_allclose(low["per_class_iou"], [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(high["per_class_iou"], [1 / 4, 1 / 3, 1 / 2])
    assert low["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert high["miou"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 2) / 3)
    assert result["best_threshold"] == 0.3
    assert result["best_miou"] == pytest.approx(low["miou"])
    assert result["published_threshold"] == 0.6
    assert result["published_miou"] == pytest.approx(high["miou"])
    json.dumps(result, allow_nan=False)  # plain, strict-JSON values


def test_evaluate_cams_adds_published_threshold_to_sweep():
    result = evaluate_cams(hand_items(), num_classes=3, thresholds=[0.6])
    assert [row["threshold"] for row in result["thresholds"]] == [0.2, 0.6]
    assert result["published_threshold"] == 0.2
    result = evaluate_cams(hand_items(), num_classes=3, thresholds=[0.6], published_threshold=None)
    assert [row["threshold"] for row in result["thresholds"]] == [0.6]
    assert result["published_miou"] is None


def test_sweep_matches_per_threshold_segmentation():
    """Against the direct route: cams_to_segmentation + confusion_matrix per threshold."""
    rng = np.random.default_rng(0)
    num_classes = 6
    # Values on a 0.1 grid so that many pixels tie exactly with a threshold.
    thresholds = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
    items = []
    for n_present in (0, 1, 2, 3, 5):
        ids = np.sort(rng.choice(num_classes - 1, n_present, replace=False))
        cams = (rng.integers(0, 11, (n_present, 9, 13)) / 10).astype(np.float32)
        gt = rng.integers(0, num_classes, (9, 13)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        items.append((cams, ids, gt))

    sweep = CamThresholdSweep(num_classes, thresholds)
    for item in items:
        sweep.add(*item)
    for threshold, conf in zip(sweep.thresholds, sweep.confusion_matrices(), strict=True):
        direct = sum(
            confusion_matrix(cams_to_segmentation(cams, ids, threshold), gt, num_classes)
            for cams, ids, gt in items
        )
        np.testing.assert_array_equal(conf, direct, err_msg=f"threshold {threshold}")

    result = evaluate_cams(items, num_classes, thresholds, published_threshold=None)
    mious = [iou(c)[0] for c in sweep.confusion_matrices()]
    assert [r["miou"] for r in result["thresholds"]] == pytest.approx(mious)
    assert result["best_threshold"] == thresholds[int(np.argmax(mious))]


def test_undefined_class_iou_is_none():
    cams = np.array([[[0.9, 0.1]]], dtype=np.float32)
    gt = np.array([[1, 0]], dtype=np.uint8)
    result = evaluate_cams([(cams, np.array([0]), gt)], num_classes=4, thresholds=[0.5])
    row = result["thresholds"][1]
    assert row["threshold"] == 0.5
    assert row["per_class_iou"] == [1.0, 1.0, None, None]
    assert row["miou"] == 1.0


def test_no_images_gives_none():
    result = evaluate_cams([], num_classes=3, thresholds=[0.1, 0.3])
    assert result["num_images"] == 0
    assert result["best_threshold"] is None and result["best_miou"] is None
    assert result["published_miou"] is None


def test_evaluate_cams_errors():
    cams, ids, gt = hand_items()[0]
    with pytest.raises(PsaError, match=r"\(1, 1, 4\).*\(1, 3\)"):
        evaluate_cams([(cams, ids, gt[:, :3])], num_classes=3, thresholds=[0.2])
    with pytest.raises(PsaError, match="num_classes"):
        evaluate_cams([(cams, np.array([2]), gt)], num_classes=3, thresholds=[0.2])
    with pytest.raises(PsaError, match="ground truth holds class index 7"):
        evaluate_cams([(cams, ids, np.full_like(gt, 7))], num_classes=3, thresholds=[0.2])


def test_write_cam_report(tmp_path):
    result = evaluate_cams(hand_items(), num_classes=3, thresholds=[0.1, 0.3, 0.6, 0.9])
    paths = [tmp_path / "out" / name for name in ("cam.json", "cam.csv", "cam.svg")]
    write_cam_report(result, ["cat", "dog"], *paths)

    saved = json.loads(paths[0].read_text())
    assert saved["class_names"] == ["background", "cat", "dog"]
    assert saved["best_threshold"] == result["best_threshold"]
    assert saved["thresholds"] == result["thresholds"]

    rows = list(csv.reader(paths[1].open()))
    assert rows[0] == ["threshold", "miou", "background", "cat", "dog"]
    assert [float(r[0]) for r in rows[1:]] == [0.1, 0.2, 0.3, 0.6, 0.9]
    for row, expected in zip(rows[1:], result["thresholds"], strict=True):
        assert float(row[1]) == pytest.approx(expected["miou"], abs=1e-6)
        assert len(row) == 5

    svg = ET.parse(paths[2]).getroot()  # drawn by psa_core.plots (tested in test_plots.py)
    assert svg.tag.endswith("svg")
    assert len(list(svg.iter("{http://www.w3.org/2000/svg}path"))) > 10
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["cam.csv", "cam.json", "cam.svg"]


def test_write_cam_report_edge_cases(tmp_path):
    names = ["background", "cat", "dog"]
    empty = evaluate_cams([], num_classes=3, thresholds=[0.3])
    write_cam_report(empty, names, tmp_path / "e.json", tmp_path / "e.csv", tmp_path / "e.svg")
    ET.parse(tmp_path / "e.svg")
    assert list(csv.reader((tmp_path / "e.csv").open()))[1] == ["0.2", "", "", "", ""]
    with pytest.raises(PsaError, match="class names"):
        write_cam_report(
            empty, ["cat"], tmp_path / "x.json", tmp_path / "x.csv", tmp_path / "x.svg"
        )


def test_summary_row_of_a_split_without_ground_truth_reports_the_walk_changes() -> None:
    changes = {
        "bg_threshold": 0.2,
        "kept": 0.8,
        "changed": 0.05,
        "removed": 0.15,
        "rewritten_below": 0.5,
        "rewritten": ["a"],
        "with_cam_foreground": 4,
    }
    rows = summary_rows({}, ["train"], {"train": changes})
    assert [r["stage"] for r in rows] == ["all", "random walk vs CAM"]
    assert rows[1]["note"] == (
        "the walk kept 80.0% of the CAM foreground, gave 5.0% another class, made 15.0% "
        "background; 1 of 4 images kept less than 50.0%"
    )
    assert rows[1]["miou"] is None


LOG_HEADER = "step,epoch,phase,loss,lr,images_per_s,elapsed_s\n"


def test_final_loss_is_the_last_val_row_or_the_last_epochs_mean_train_loss(tmp_path) -> None:
    log = tmp_path / "train_log.csv"
    train_rows = "1,1,train,0.9,0.01,5,1\n2,1,train,0.8,0.01,5,2\n3,2,train,0.6,0.01,5,3\n"
    train_rows += "4,2,train,0.4,0.01,5,4\n"
    log.write_text(LOG_HEADER + train_rows)
    assert final_loss(log) == ("train", pytest.approx(0.5))
    log.write_text(LOG_HEADER + "2,1,val,0.7,,,2\n" + train_rows + "4,2,val,0.55,,,4\n")
    assert final_loss(log) == ("val", 0.55)
    assert last_epoch_losses(log) == {"train": pytest.approx(0.5), "val": 0.55}


@pytest.mark.parametrize(
    "text", ["", LOG_HEADER, "step,epoch,phase\n1,1,train\n", LOG_HEADER + "x,1,train,a,,,\n"]
)
def test_final_loss_of_a_bad_log_names_the_file(tmp_path, text: str) -> None:
    log = tmp_path / "train_log.csv"
    log.write_text(text)
    with pytest.raises(PsaError, match=re.escape(str(log))):
        final_loss(log)


def _log(tmp_path, rows: str):
    log = tmp_path / "train_log.csv"
    log.write_text(LOG_HEADER + rows)
    return log


# 4 training images: class 0 on 1, class 1 on 2; the guess on them is the mean binary
# entropy of 1/4 and 1/2 (tests/test_metrics.py checks constant_guess_loss itself)
GUESS_TRAIN = np.array([[1, 0], [0, 1], [0, 1], [0, 0]], dtype=np.float32)
GUESS = (-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) + np.log(2)) / 2


@pytest.mark.parametrize(
    ("share", "nothing"), [(0.2, False), (0.89, False), (0.91, True), (1.05, True)]
)
def test_classifier_check_says_when_the_val_loss_is_near_the_constant_guess(
    tmp_path, share: float, nothing: bool
) -> None:
    loss = share * GUESS
    log = _log(tmp_path, f"1,1,train,0.9,0.01,5,1\n1,1,val,{loss},,,1\n")
    row, verdict = classifier_check("train", log, GUESS_TRAIN, GUESS_TRAIN)
    assert verdict is nothing
    assert (row["split"], row["stage"], row["setting"], row["miou"]) == (
        "train",
        "CAM classifier",
        "final val loss",
        None,
    )
    assert ("learned next to nothing" in row["note"]) is nothing
    if not nothing:
        assert row["note"] == (
            f"val loss {loss:.3f}, {100 * share:.1f}% of a constant guess of the class "
            f"frequencies ({GUESS:.3f})"
        )
    assert [r["stage"] for r in summary_rows({}, ["train"], classifier=row)] == [
        "CAM classifier",
        "all",
    ]


def test_classifier_check_hedges_a_train_loss_and_flags_nan(tmp_path) -> None:
    row, nothing = classifier_check(
        "t", _log(tmp_path, f"1,1,train,{GUESS},0.01,5,1\n"), GUESS_TRAIN
    )
    assert nothing and row["setting"] == "final train loss"
    assert "may have learned next to nothing" in row["note"] and "val_split" in row["note"]
    row, nothing = classifier_check(
        "t", _log(tmp_path, "1,1,val,nan,,,1\n"), GUESS_TRAIN, GUESS_TRAIN
    )
    assert nothing and "learned next to nothing" in row["note"]


def test_classifier_check_of_a_validated_run_needs_the_val_labels(tmp_path) -> None:
    log = _log(tmp_path, "1,1,val,0.2,,,1\n")
    with pytest.raises(PsaError, match=re.escape(f"{log}: the classifier was validated")):
        classifier_check("train", log, GUESS_TRAIN)


def test_psa_summarize_scores_the_val_loss_against_the_guess_on_val_labels(tmp_path) -> None:
    """Trained on 4 images where class a is on 3; validated on 2 where it is on none. The
    guess's val loss uses the training frequencies on the val labels; no other row."""
    from psa_core.data import write_labels
    from psa_core.metrics import constant_guess_loss
    from tests.cli_helpers import psa_in_process

    classes = ["a", "b"]
    train = {f"t{i}": np.array(row) for i, row in enumerate([[1, 0], [1, 1], [1, 0], [0, 1]])}
    val = {"v0": np.array([0, 1]), "v1": np.array([0, 1])}
    write_labels(tmp_path / "train.json", classes, train)
    write_labels(tmp_path / "val.json", classes, val)
    (tmp_path / "log.csv").write_text(LOG_HEADER + "1,1,train,0.6,0.01,5,1\n1,1,val,0.2,,,1\n")
    out = tmp_path / "summary"
    proc = psa_in_process(
        "summarize", "--cam-log", str(tmp_path / "log.csv"), "--train-split", "mine",
        "--train-labels", str(tmp_path / "train.json"), "--val-labels",
        str(tmp_path / "val.json"), "--out-json", f"{out}.json", "--out-csv", f"{out}.csv",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with open(f"{out}.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["split"], r["stage"]) for r in rows] == [("mine", "CAM classifier"), ("", "all")]
    guess = constant_guess_loss(np.stack(list(train.values())), np.stack(list(val.values())))
    assert guess > constant_guess_loss(*[np.stack(list(train.values()))] * 2)
    expected = f"val loss 0.200, {100 * 0.2 / guess:.1f}% of a constant guess of the class "
    expected += f"frequencies ({guess:.3f})"
    assert rows[0]["note"] == expected
