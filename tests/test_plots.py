"""psa_core.plots: every writer makes a real picture, atomically; the pure image helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from psa_core import plots
from psa_core.constants import VOC_CLASSES
from psa_core.errors import PsaError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sweep_result(mious=(0.30, 0.42, None, 0.45, 0.40)) -> dict:
    thresholds = [0.1, 0.15, 0.2, 0.25, 0.3]
    scored = [(t, m) for t, m in zip(thresholds, mious, strict=True) if m is not None]
    best = max(scored, key=lambda p: p[1]) if scored else (None, None)
    published = dict(zip(thresholds, mious, strict=True))[0.2]
    return {
        "num_images": 3,
        "num_classes": 21,
        "thresholds": [
            {"threshold": t, "miou": m, "per_class_iou": [m] * 21}
            for t, m in zip(thresholds, mious, strict=True)
        ],
        "best_threshold": best[0],
        "best_miou": best[1],
        "published_threshold": 0.2,
        "published_miou": published,
    }


def gallery_row(name: str, h: int = 30, w: int = 40, rng=None) -> dict:
    rng = rng or np.random.default_rng(0)
    labels = np.zeros((h, w), dtype=np.uint8)
    labels[5:20, 10:30] = 15  # person
    labels[0, :] = 255
    return {
        "name": name,
        "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "ground truth": labels,
        "CAM": rng.random((h, w)).astype(np.float32),
        "CRF labels": labels.copy(),
        # "random walk" missing: an empty panel
    }


def png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.size


def only_file(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- line plots ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_threshold_sweep_plot_writes_png_and_svg(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"sweep{suffix}"
    plots.threshold_sweep_plot(sweep_result(), path, title="CAM mIoU")
    if suffix == ".png":
        width, height = png_size(path)
        assert width > height
    else:
        text = path.read_text()
        assert text.startswith(("<?xml", "<svg"))
        assert "<svg" in text
    assert only_file(tmp_path) == [path.name]


@pytest.mark.parametrize(
    "mious", [(None,) * 5, (0.3, None, None, None, None)], ids=["all-none", "one-scored"]
)
def test_threshold_sweep_plot_with_undefined_mious(tmp_path: Path, mious) -> None:
    path = tmp_path / "sweep.png"
    plots.threshold_sweep_plot(sweep_result(mious), path, title="nothing scored")
    png_size(path)


def test_threshold_sweep_plot_of_an_empty_sweep(tmp_path: Path) -> None:
    result = {
        "num_images": 0,
        "num_classes": 21,
        "thresholds": [],
        "best_threshold": None,
        "best_miou": None,
        "published_threshold": None,
        "published_miou": None,
    }
    plots.threshold_sweep_plot(result, tmp_path / "sweep.svg", title="empty")
    assert "no images scored" in (tmp_path / "sweep.svg").read_text()


def test_svg_is_reproducible(tmp_path: Path) -> None:
    # No date and fixed ids: a rerun with the same numbers gives the same file.
    plots.threshold_sweep_plot(sweep_result(), tmp_path / "a.svg", title="t")
    plots.threshold_sweep_plot(sweep_result(), tmp_path / "b.svg", title="t")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


def test_sweep_plot_generic(tmp_path: Path) -> None:
    path = tmp_path / "alpha.png"
    plots.sweep_plot(
        [16, 4, 8, 32],
        [0.55, 0.5, 0.58, 0.52],
        path,
        xlabel="random-walk alpha",
        title="random walk mIoU",
        mark={"chosen alpha 8": 8, "not swept": 12, "none": None},
    )
    png_size(path)
    with pytest.raises(PsaError, match="one y per x"):
        plots.sweep_plot([1, 2], [0.5], tmp_path / "bad.png", xlabel="x", title="t")


# -- atomicity ----------------------------------------------------------------


def test_failed_save_leaves_no_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    def broken(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(FigureCanvasAgg, "print_figure", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.threshold_sweep_plot(sweep_result(), tmp_path / "sweep.png", title="t")
    with pytest.raises(RuntimeError, match="disk full"):
        plots.gallery_figure([gallery_row("a")], list(VOC_CLASSES), tmp_path / "gallery.png")
    assert only_file(tmp_path) == []


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "sweep.png"
    path.write_bytes(b"old")

    def broken(self, *args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(FigureCanvasAgg, "print_figure", broken)
    with pytest.raises(RuntimeError):
        plots.threshold_sweep_plot(sweep_result(), path, title="t")
    assert path.read_bytes() == b"old"
    assert only_file(tmp_path) == ["sweep.png"]


def test_unsupported_suffix_is_a_user_error_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(PsaError, match=r"\.xyz.*\.png or \.svg"):
        plots.threshold_sweep_plot(sweep_result(), tmp_path / "sweep.xyz", title="t")
    with pytest.raises(PsaError, match="suffix"):
        plots.gallery_figure([gallery_row("a")], list(VOC_CLASSES), tmp_path / "gallery")
    assert only_file(tmp_path) == []


# -- image helpers ------------------------------------------------------------


def test_label_image_uses_the_voc_palette() -> None:
    mask = np.array([[0, 1], [255, 15]], dtype=np.uint8)
    rgb = plots.label_image(mask)
    assert rgb.shape == (2, 2, 3)
    assert rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == [128, 0, 0]
    assert rgb[1, 0].tolist() == [224, 224, 192]
    assert rgb[1, 1].tolist() == [192, 128, 128]  # person
    # Other integer dtypes work; values beyond a palette index do not.
    assert np.array_equal(plots.label_image(mask.astype(np.int64)), rgb)
    with pytest.raises(PsaError, match=r"\[0, 255\]"):
        plots.label_image(np.array([[256]], dtype=np.int64))
    with pytest.raises(PsaError, match=r"\(H, W\)"):
        plots.label_image(np.zeros((2, 2, 3), dtype=np.uint8))


def test_heatmap_image_shape_dtype_and_ordering() -> None:
    scores = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    rgb = plots.heatmap_image(scores)
    assert rgb.shape == (3, 4, 3)
    assert rgb.dtype == np.uint8
    low, high = rgb[0, 0], rgb[-1, -1]
    assert not np.array_equal(low, high)
    assert high[0] > low[0] and high[2] < low[2]  # jet: red when high, blue when low
    # Out-of-range values clip to the ends; NaN is black.
    odd = plots.heatmap_image(np.array([[-1.0, 2.0, np.nan]]))
    assert odd[0, 0].tolist() == low.tolist()
    assert odd[0, 1].tolist() == high.tolist()
    assert odd[0, 2].tolist() == [0, 0, 0]


def test_class_legend_handles_names_and_colours() -> None:
    handles = plots.class_legend_handles([255, 1, 0, 1, 15], list(VOC_CLASSES))
    assert [h.get_label() for h in handles] == ["background", "aeroplane", "person", "uncertain"]
    assert [round(c * 255) for c in handles[-1].get_facecolor()[:3]] == [224, 224, 192]


# -- gallery ------------------------------------------------------------------


def test_gallery_one_row_is_wide(tmp_path: Path) -> None:
    path = tmp_path / "gallery.png"
    plots.gallery_figure([gallery_row("2007_000032")], list(VOC_CLASSES), path)
    width, height = png_size(path)
    assert width > height
    assert only_file(tmp_path) == ["gallery.png"]


def test_gallery_five_by_four_is_under_a_megabyte(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for i, (h, w) in enumerate([(300, 400), (400, 300), (250, 500), (375, 500)]):
        row = gallery_row(f"img{i}", h, w, rng)
        row["random walk"] = row.pop("CRF labels")
        row["CRF labels"] = np.full((h, w), 255, dtype=np.uint8)
        rows.append(row)
    path = tmp_path / "gallery.png"
    plots.gallery_figure(rows, list(VOC_CLASSES), path)
    width, height = png_size(path)
    assert width > height
    assert path.stat().st_size < 1_000_000  # even with incompressible noise images


def test_gallery_of_no_rows_still_writes_a_picture(tmp_path: Path) -> None:
    plots.gallery_figure([], list(VOC_CLASSES), tmp_path / "gallery.png")
    png_size(tmp_path / "gallery.png")


def test_gallery_rejects_unknown_panels_and_bad_arrays(tmp_path: Path) -> None:
    row = gallery_row("a")
    row["crf"] = row.pop("CRF labels")
    with pytest.raises(PsaError, match=r"'a'.*\['crf'\].*columns="):
        plots.gallery_figure([row], list(VOC_CLASSES), tmp_path / "g.png")
    row = gallery_row("b")
    row["CAM"] = np.zeros((2, 30, 40), dtype=np.float32)
    with pytest.raises(PsaError, match=r"'b', panel 'CAM'.*\(2, 30, 40\)"):
        plots.gallery_figure([row], list(VOC_CLASSES), tmp_path / "g.png")
    assert only_file(tmp_path) == []


def test_gallery_custom_columns(tmp_path: Path) -> None:
    row = {"name": "x", "image": np.zeros((20, 20, 3), np.uint8), "labels": np.ones((20, 20), int)}
    path = tmp_path / "g.svg"
    plots.gallery_figure([row], list(VOC_CLASSES), path, columns=("image", "labels"))
    assert path.read_text().startswith("<?xml")
