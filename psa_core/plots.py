"""Every picture of the pipeline: evaluation curves and the example gallery.

The one plotting module (STYLE.md). It draws with matplotlib's object API, a
`Figure` on a `FigureCanvasAgg`, never pyplot: no global figure registry, no
display, nothing to close. Each writer saves atomically through
`psa_core.io.atomic_path` (the format comes from the target's suffix, since the
temporary name ends in `.tmp`) and returns None.

Colours of segmentation classes are the VOC palette (`voc_palette`): index i
is class i (0 background, c + 1 foreground class c, 255 uncertain / void).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from psa_core.constants import BACKGROUND_INDEX, IGNORE_INDEX, voc_palette
from psa_core.errors import PsaError
from psa_core.io import atomic_path

DPI = 100
"""Resolution of raster output; a 5 x 4 gallery stays well under 1 MB."""

HEATMAP_CMAP = "jet"
"""Colormap of CAM heatmaps, as in the PSA paper's figures."""

GALLERY_COLUMNS: tuple[str, ...] = (
    "image",
    "ground truth",
    "CAM",
    "CRF labels",
    "random walk",
    "segmentation network",
)
"""Default panel titles of `gallery_figure`, left to right."""

_PANEL_WIDTH_IN = 2.0  # inches per gallery column
_LEGEND_WIDTH_IN = 1.5  # room for a row's class legend
_CURVE_COLOUR = "#1f77b4"
_MARK_STYLES = (  # (colour, marker, size): distinct even when two marks coincide
    ("#d62728", "o", 11),
    ("#2ca02c", "s", 8),
    ("#9467bd", "D", 6),
    ("#ff7f0e", "^", 6),
)


# -- saving -------------------------------------------------------------------


def _save(fig: Figure, path: str | os.PathLike) -> None:
    """Write `fig` to `path` atomically, in the format its suffix names."""
    target = Path(path)
    canvas = FigureCanvasAgg(fig)
    fmt = target.suffix.lower().lstrip(".")
    supported = canvas.get_supported_filetypes()
    if fmt not in supported:
        raise PsaError(
            f"{target}: cannot draw a picture with suffix '{target.suffix}'; "
            "name it .png or .svg (or .pdf)"
        )
    # Without a date and with a fixed id salt, the same figure gives the same bytes,
    # so a rerun does not look like a changed result.
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)
    with atomic_path(target) as tmp, matplotlib.rc_context({"svg.hashsalt": "psa_core"}):
        canvas.print_figure(tmp, format=fmt, dpi=DPI, metadata=metadata)
    fig.clear()  # drop the artists now rather than at garbage collection


# -- line plots ---------------------------------------------------------------


def sweep_plot(
    xs: Sequence[float],
    ys: Sequence[float | None],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str = "mIoU",
    title: str,
    mark: Mapping[str, float | None] | None = None,
    empty_note: str = "no data",
) -> None:
    """Line plot of a parameter sweep (a threshold, a random-walk alpha, ...).

    Args:
        xs: (N,) parameter values; drawn in ascending order.
        ys: (N,) scores; None or NaN leaves a gap in the line.
        path: .png or .svg (or .pdf) file to write.
        xlabel: x-axis label; ylabel: y-axis label.
        title: figure title.
        mark: legend label -> x value to highlight with a dashed vertical line
            (and a marker where the curve has a score at that x); None keeps
            the legend entry (and its colour) without drawing anything.
            Colours and markers follow the order of the entries.
        empty_note: text shown in the plot when no y is defined.
    """
    if len(xs) != len(ys):
        raise PsaError(f"sweep_plot: {len(xs)} x values but {len(ys)} y values; give one y per x")
    pairs = sorted(zip((float(x) for x in xs), (_finite_or_nan(y) for y in ys), strict=True))
    x = np.array([p[0] for p in pairs], dtype=np.float64)
    y = np.array([p[1] for p in pairs], dtype=np.float64)
    defined = np.isfinite(y)

    fig = Figure(figsize=(7.2, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, y, color=_CURVE_COLOUR, linewidth=2, marker="o", markersize=3.5, zorder=2)
    for (label, at), (colour, marker, size) in zip(
        (mark or {}).items(), _cycle(_MARK_STYLES), strict=False
    ):
        if at is None:
            at = y_at = np.nan
        else:
            at = float(at)
            ax.axvline(at, color=colour, linestyle="--", linewidth=1.2, alpha=0.8, zorder=1)
            hit = np.flatnonzero(np.isclose(x, at, rtol=0, atol=1e-9) & defined)
            y_at = y[hit[0]] if hit.size else np.nan
        # The legend entry shows the marker and the dashed line together.
        ax.plot(
            [at],
            [y_at],
            linestyle="--",
            color=colour,
            marker=marker,
            markersize=size,
            markerfacecolor="none",
            markeredgewidth=2,
            label=label,
            zorder=3,
            clip_on=False,
        )
    if not defined.any():
        ax.text(
            0.5,
            0.5,
            empty_note,
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.45",
            bbox={"facecolor": "white", "edgecolor": "none"},
            zorder=4,
        )
        ax.set_ylim(0.0, 1.0)
        if x.size:  # NaN points set no data limits; keep the swept range in view
            pad = 0.03 * (x[-1] - x[0]) or 0.05
            ax.set_xlim(x[0] - pad, x[-1] + pad)
    else:
        ax.margins(x=0.03, y=0.12)
        lo, hi = ax.get_ylim()
        if np.nanmin(y) >= 0.0 and np.nanmax(y) <= 1.0:  # a score: no axis beyond [0, 1]
            ax.set_ylim(max(lo, 0.0), min(hi, 1.0))
    if x.size == 0:
        ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, color="0.88", linewidth=0.8)
    ax.set_axisbelow(True)
    if mark:
        ax.legend(loc="best", fontsize=9, framealpha=0.9)
    _save(fig, path)


def threshold_sweep_plot(result: Mapping[str, Any], path: str | os.PathLike, *, title: str) -> None:
    """mIoU against the background threshold of an `evaluate_cams` result.

    Args:
        result: the dict from `psa_core.evaluate.evaluate_cams` (docs/design.md
            §1.5): "thresholds" is a list of {"threshold", "miou", ...} with
            mIoU None where undefined; "best_threshold" / "best_miou" and
            "published_threshold" / "published_miou" are marked.
        path: .svg or .png file to write.
        title: figure title.
    """
    rows = result.get("thresholds") or []
    best = result.get("best_threshold")
    # "best" is always listed (n/a when nothing scored) so that "published" keeps its colour.
    mark: dict[str, float | None] = {
        "best n/a" if best is None else f"best {best:g}: {_percent(result.get('best_miou'))}": best
    }
    published = result.get("published_threshold")
    if published is not None:
        mark[f"published {published:g}: {_percent(result.get('published_miou'))}"] = published
    sweep_plot(
        [row["threshold"] for row in rows],
        [row["miou"] for row in rows],
        path,
        xlabel="background threshold",
        ylabel="mIoU",
        title=title,
        mark=mark,
        empty_note="no images scored",
    )


# -- images -------------------------------------------------------------------


@functools.cache
def _palette() -> np.ndarray:
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
    palette.flags.writeable = False
    return palette


def label_image(mask: np.ndarray) -> np.ndarray:
    """Colour a label map with the VOC palette.

    Args:
        mask: (H, W) uint8 class indices (0 background, c + 1 class c, 255
            uncertain / void); any integer dtype with values in [0, 255].

    Returns:
        (H, W, 3) uint8 RGB; 255 is cream (224, 224, 192).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise PsaError(
            f"label map of shape {mask.shape} and dtype {mask.dtype}; expected (H, W) uint8 "
            "class indices"
        )
    if mask.dtype != np.uint8 and mask.size and (mask.min() < 0 or mask.max() > 255):
        raise PsaError(
            f"label map holds values in [{mask.min()}, {mask.max()}]; expected class indices "
            "in [0, 255]"
        )
    return _palette()[mask.astype(np.intp, copy=False)]


def heatmap_image(scores: np.ndarray, cmap: str = HEATMAP_CMAP) -> np.ndarray:
    """Render a score map (e.g. a CAM) with a colormap.

    Args:
        scores: (H, W) float in [0, 1]; values outside are clipped, NaN is black.
        cmap: a matplotlib colormap name.

    Returns:
        (H, W, 3) uint8 RGB (blue low, red high for "jet").
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise PsaError(f"score map of shape {scores.shape}; expected (H, W) floats in [0, 1]")
    rgba = matplotlib.colormaps[cmap](np.clip(scores, 0.0, 1.0))
    rgba[~np.isfinite(scores)] = (0.0, 0.0, 0.0, 1.0)
    return np.round(rgba[..., :3] * 255).astype(np.uint8)


def class_legend_handles(indices: Iterable[int], class_names: Sequence[str]) -> list[Patch]:
    """Legend patches in palette colours for segmentation indices.

    Args:
        indices: segmentation indices (0 background, c + 1 class c, 255
            uncertain); drawn in ascending order, duplicates dropped.
        class_names: the K foreground class names (index c + 1 is
            class_names[c]).

    Returns:
        One `matplotlib.patches.Patch` per index, labelled with its name.
    """
    handles = []
    for index in sorted({int(i) for i in indices}):
        if index == BACKGROUND_INDEX:
            name = "background"
        elif index == IGNORE_INDEX:
            name = "uncertain"
        elif 0 < index <= len(class_names):
            name = class_names[index - 1]
        else:
            name = f"class {index}"
        colour = _palette()[index] / 255.0
        handles.append(Patch(facecolor=colour, edgecolor="0.35", linewidth=0.6, label=name))
    return handles


def gallery_figure(
    rows: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    columns: Sequence[str] = GALLERY_COLUMNS,
) -> None:
    """One picture of examples: a row per image, a column per stage's output.

    Args:
        rows: one dict per example: "name" (str) and, per column title, an
            (H, W, 3) uint8 RGB image (shown as is), an (H, W) integer label
            map (VOC colours, `label_image`) or an (H, W) float map in [0, 1]
            (`heatmap_image`). A missing column is an empty panel.
        class_names: the K foreground class names, for the legend.
        path: the .png (or .svg / .pdf) file to write.
        columns: panel titles, left to right.

    Each row's legend lists the classes that occur in its label maps.
    """
    columns = list(columns)
    if not columns:
        raise PsaError("gallery_figure: no columns; pass at least one panel title")
    panels = [_gallery_row(i, row, columns) for i, row in enumerate(rows)]
    if not panels:
        fig = Figure(figsize=(4.0, 1.5), layout="constrained")
        fig.text(0.5, 0.5, "no images", ha="center", va="center", color="0.45")
        _save(fig, path)
        return

    aspects = [_row_aspect(row_panels) for row_panels in panels]
    width = len(columns) * _PANEL_WIDTH_IN + _LEGEND_WIDTH_IN + 0.3
    height = sum(_PANEL_WIDTH_IN * a for a in aspects) + 0.35 + 0.1 * len(panels)
    fig = Figure(figsize=(width, height), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.02)
    axes = fig.subplots(
        len(panels),
        len(columns),
        squeeze=False,
        gridspec_kw={"height_ratios": aspects},
    )
    for r, (row, row_panels) in enumerate(zip(rows, panels, strict=True)):
        present: set[int] = set()
        for c, title in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=10)
            kind, array = row_panels.get(title, (None, None))
            if kind is None:
                for spine in ax.spines.values():
                    spine.set_visible(False)
                ax.text(0.5, 0.5, "—", transform=ax.transAxes, ha="center", va="center")
                continue
            if kind == "labels":
                present.update(np.unique(array).tolist())
                ax.imshow(label_image(array), interpolation="nearest")
            elif kind == "scores":
                ax.imshow(heatmap_image(array))
            else:
                ax.imshow(array)
            for spine in ax.spines.values():
                spine.set_linewidth(0.5)
                spine.set_color("0.6")
        axes[r, 0].set_ylabel(str(row.get("name", f"example {r}")), fontsize=9)
        if present:
            handles = class_legend_handles(present, class_names)
            axes[r, -1].legend(
                handles=handles,
                loc="center left",
                bbox_to_anchor=(1.04, 0.5),
                fontsize=8,
                frameon=False,
                handlelength=1.2,
                handleheight=1.0,
                borderaxespad=0.0,
                ncols=1 if len(handles) <= 8 else 2,
            )
    _save(fig, path)


def _gallery_row(
    index: int, row: Mapping[str, Any], columns: list[str]
) -> dict[str, tuple[str, np.ndarray]]:
    """Classify one row's panels as ("rgb" | "labels" | "scores", array)."""
    name = row.get("name", f"example {index}")
    unknown = sorted(set(row) - set(columns) - {"name"})
    if unknown:
        raise PsaError(
            f"gallery row '{name}' has panels {unknown} that are not among the columns "
            f"{columns}; rename them or pass columns="
        )
    panels = {}
    for title in columns:
        if title not in row or row[title] is None:
            continue
        array = np.asarray(row[title])
        if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
            panels[title] = ("rgb", array)
        elif array.ndim == 2 and np.issubdtype(array.dtype, np.integer):
            panels[title] = ("labels", array)
        elif array.ndim == 2 and np.issubdtype(array.dtype, np.floating):
            panels[title] = ("scores", array)
        else:
            raise PsaError(
                f"gallery row '{name}', panel '{title}': array of shape {array.shape} and dtype "
                f"{array.dtype}; expected (H, W, 3) uint8 RGB, (H, W) uint8 labels or (H, W) "
                "float scores"
            )
    return panels


def _row_aspect(panels: Mapping[str, tuple[str, np.ndarray]]) -> float:
    """Height / width of a row's first panel (3:4 when the row is empty)."""
    for _, array in panels.values():
        h, w = array.shape[:2]
        if h and w:
            return h / w
    return 0.75


# -- small helpers ------------------------------------------------------------


def _finite_or_nan(value: float | None) -> float:
    if value is None:
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}% mIoU"


def _cycle(items: Sequence[Any]) -> Iterable[Any]:
    while True:
        yield from items
