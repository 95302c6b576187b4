"""One home per default value: psa_core.defaults, and the schema that repeats it for Snakemake.

The CLI and the library derive their defaults from `psa_core.defaults`; the
config schema cannot import Python, so this test checks that it agrees.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from psa_core import defaults
from psa_core.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())

# schema section (dotted path) → the dataclass instance that is its home
SECTIONS = {
    "synthetic": defaults.SYNTHETIC,
    "cam": defaults.CAM_TRAIN,
    "cam.infer": defaults.CAM_INFER,
    "cam.evaluate": defaults.CAM_EVALUATE,
    "crf": defaults.CRF,
    "affinity": defaults.AFFINITY_TRAIN,
    "random_walk": defaults.RANDOM_WALK,
    "random_walk.evaluate": defaults.RANDOM_WALK_EVALUATE,
    "segmentation": defaults.SEGMENTATION_TRAIN,
    "segmentation.infer": defaults.SEGMENTATION_INFER,
    "report": defaults.REPORT,
}


def _schema_section(dotted: str) -> dict:
    node = SCHEMA
    for key in dotted.split("."):
        node = node["properties"][key]
    return node["properties"]


def _schema_default(prop: dict):
    if prop.get("type") == "object":
        return {key: sub["default"] for key, sub in prop["properties"].items()}
    return prop["default"]


def _as_schema_value(field: str, value):
    if field == "color_jitter":
        return dict(zip(defaults.JITTER_KEYS, value, strict=True))
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("section", list(SECTIONS))
def test_schema_defaults_equal_psa_core_defaults(section: str) -> None:
    props = _schema_section(section)
    home = SECTIONS[section]
    checked = 0
    for field in dataclasses.fields(home):
        if field.name not in props:
            # resize_long is CAM-only; the affinity stage has no random resize
            assert getattr(home, field.name) is None, f"{section}.{field.name} missing in schema"
            continue
        expected = _as_schema_value(field.name, getattr(home, field.name))
        assert _schema_default(props[field.name]) == expected, f"{section}.{field.name}"
        checked += 1
    assert checked == len([f for f in dataclasses.fields(home) if f.name in props])
    assert checked >= 1


def test_affinity_radius_default() -> None:
    assert _schema_section("affinity")["radius"]["default"] == defaults.AFFINITY_RADIUS


def test_segmentation_dilation_default() -> None:
    dilation = _schema_section("segmentation")["dilation"]["default"]
    assert dilation == defaults.SEGMENTATION_DILATION


def _subparser(name: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


@pytest.mark.parametrize(
    ("command", "home"),
    [
        ("train-cam", defaults.CAM_TRAIN),
        ("train-affinity", defaults.AFFINITY_TRAIN),
        ("infer-cam", defaults.CAM_INFER),
        ("evaluate-cam", defaults.CAM_EVALUATE),
        ("crf-labels", defaults.CRF),
        ("synth", defaults.SYNTHETIC),
        ("random-walk", defaults.RANDOM_WALK),
        ("evaluate-random-walk", defaults.RANDOM_WALK_EVALUATE),
        ("train-seg", defaults.SEGMENTATION_TRAIN),
        ("infer-seg", defaults.SEGMENTATION_INFER),
        ("package-seg-model", defaults.SEGMENTATION_INFER),
    ],
)
def test_cli_defaults_come_from_psa_core_defaults(command: str, home) -> None:
    options = {a.dest: a.default for a in _subparser(command)._actions}
    for field in dataclasses.fields(home):
        if field.name in options:
            value = getattr(home, field.name)
            assert options[field.name] == value, f"psa {command} --{field.name}"


def test_module_constants_derive_from_defaults() -> None:
    from psa_core import affinity, cam, crf, evaluate, optim, transforms

    assert defaults.CAM_INFER.scales == cam.DEFAULT_SCALES
    assert defaults.CAM_EVALUATE.bg_threshold == evaluate.PUBLISHED_BG_THRESHOLD
    assert defaults.CAM_TRAIN.poly_power == optim.POLY_POWER
    assert defaults.CAM_TRAIN.crop_size == transforms.CROP_SIZE
    assert affinity.DEFAULT_RADIUS == defaults.AFFINITY_RADIUS
    assert defaults.CRF.iterations == crf.CRF_ITERATIONS
    assert (defaults.CRF.alpha_low, defaults.CRF.alpha_high) == (crf.ALPHA_LOW, crf.ALPHA_HIGH)
