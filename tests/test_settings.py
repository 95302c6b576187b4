"""One home per setting (psa_core.settings): the schema, the config defaults, the `psa`
options and the jobs' settings all come from the sections' dataclass fields."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from psa_core import settings
from psa_core.cli import COMMANDS, build_parser, driver_arguments, parameters
from psa_core.errors import PsaError

REPO = Path(__file__).resolve().parents[1]


def _subparser(name: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


# -- the schema ------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(settings.SECTIONS))
def test_schema_has_every_field_with_default_type_and_description(path: str) -> None:
    node = settings.section_schema(path)
    cls = settings.SECTIONS[path]
    assert node["type"] == "object" and node["additionalProperties"] is False
    for field in settings.fields(cls):
        prop = node["properties"][field.name]
        assert prop["default"] == settings.as_dict(cls())[field.name], f"{path}.{field.name}"
        assert prop["description"] == field.description and field.description
        jsonschema.Draft202012Validator(prop).validate(prop["default"])  # default is allowed
    subsections = {p.rpartition(".")[2] for p in settings.SECTIONS if p.rpartition(".")[0] == path}
    subsections.discard("")
    assert set(node["properties"]) == {f.name for f in settings.fields(cls)} | subsections


def test_schema_types_and_constraints() -> None:
    cam = settings.section_schema("cam")["properties"]
    assert cam["lr"] == {
        "type": "number",
        "exclusiveMinimum": 0,
        "default": 0.1,
        "description": "Base learning rate (published 0.1).",
    }
    assert cam["resize_long"]["minItems"] == cam["resize_long"]["maxItems"] == 2
    assert cam["resize_long"]["items"] == {"type": "integer", "minimum": 8}
    assert cam["init_weights"]["type"] == ["string", "null"]
    assert cam["color_jitter"]["properties"]["hue"]["maximum"] == 0.5
    assert settings.section_schema("segmentation.infer")["properties"]["flip"]["type"] == "boolean"
    assert settings.section_schema("")["properties"]["amp"]["enum"] == [
        "none",
        "bfloat16",
        "float16",
    ]


def test_committed_config_is_valid_and_names_only_known_keys() -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert settings.config_errors(config) == []
    complete = settings.complete_config(config)
    assert complete["cam"]["lr"] == 0.01  # the demo's value, not the default
    assert complete["cam"]["flip"] is True  # filled from the published default
    assert complete["cam"]["infer"]["scales"] == [1.0, 0.5, 1.5, 2.0]
    assert json.loads(json.dumps(complete)) == complete  # plain JSON data


def test_config_errors_name_the_key() -> None:
    assert settings.config_errors({"cam": {"lr": -1}}) == [
        "key 'cam.lr': -1 is less than or equal to the minimum of 0"
    ]
    (error,) = settings.config_errors({"cam": {"infer": {"typo": 1}}})
    assert error.startswith("key 'cam.infer': Additional properties")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"crf": {"alpha_low": 40}}, "section 'crf': alpha_low 40.0 > alpha_high 32.0"),
        ({"cam": {"resize_long": [300, 200]}}, "section 'cam': .300, 200. has min > max"),
        ({"synthetic": {"image_size": [90, 40]}}, "section 'synthetic': .90, 40. has min > max"),
    ],
)
def test_ordered_pairs_are_checked_by_the_section(config: dict, message: str) -> None:
    with pytest.raises(PsaError, match=message):
        settings.complete_config(config)


# -- job settings -----------------------------------------------------------------------


def test_job_settings_pick_sections_keys_and_leave_subsections_out() -> None:
    config = settings.complete_config({"cam": {"lr": 0.01, "infer": {"scales": [1.0]}}})
    picked = json.loads(settings.job_settings(config, "model", "cam", ":device,seed"))
    assert set(picked) == {"model", "cam", "device", "seed"}
    assert picked["cam"]["lr"] == 0.01 and "infer" not in picked["cam"]
    infer = json.loads(settings.job_settings(config, "cam.infer"))
    assert infer == {"cam": {"infer": {"scales": [1.0], "dtype": "float16"}}}
    crf = json.loads(settings.job_settings(config, "crf:-workers,dtype"))["crf"]
    assert "workers" not in crf and "dtype" not in crf and crf["alpha_low"] == 4.0


def test_a_changed_value_changes_exactly_the_jobs_that_read_it() -> None:
    base = settings.complete_config({})
    changed = settings.complete_config({"cam": {"evaluate": {"bg_threshold": 0.3}}})
    assert settings.job_settings(base, "cam") == settings.job_settings(changed, "cam")
    assert settings.job_settings(base, "cam.evaluate") != settings.job_settings(
        changed, "cam.evaluate"
    )


# -- the command line ---------------------------------------------------------------------


def test_every_command_builds_and_offers_its_sections_options() -> None:
    for name, driver in COMMANDS.items():
        options = {a.dest: a for a in _subparser(name)._actions}
        for param in parameters(driver):
            if param.kind not in ("section", "overrides"):
                continue
            for field in settings.fields(settings.SECTIONS[param.path]):
                wanted = param.keys is None or field.name in param.keys
                dest = f"settings__{param.name}__{field.name}"
                assert (dest in options) == (field.cli and wanted), (name, dest)
                if dest in options:
                    help_ = options[dest].help
                    assert field.description in help_ and "(default: " in help_


def test_file_options_have_help_from_the_drivers() -> None:
    for name in COMMANDS:
        for action in _subparser(name)._actions:
            assert action.help, f"psa {name} {action.option_strings}: no help"


def _train_cam_args(*extra: str) -> list[str]:
    files = ["--root", "r", "--images", "i", "--labels", "l", "--checkpoint", "c"]
    return ["train-cam", *files, "--out-log", "o.csv", "--out", "w.pt", *extra]


def _parse(argv: list[str]) -> dict:
    args = vars(build_parser().parse_args(argv))
    return driver_arguments(args["driver"], args)


def test_options_override_settings_which_override_defaults(tmp_path: Path) -> None:
    assert _parse(_train_cam_args())["cam"] == settings.CamSettings()
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump({"cam": {"lr": 0.01, "epochs": 3}, "crf": {"alpha_low": 8}}))
    parsed = _parse(_train_cam_args("--settings", str(file), "--lr", "0.05"))
    assert parsed["cam"] == settings.CamSettings(lr=0.05, epochs=3)
    assert parsed["run"] == settings.RunSettings()
    as_json = json.dumps({"cam": {"color_jitter": {"hue": 0.0}}, "seed": 4})
    parsed = _parse(_train_cam_args("--settings", as_json, "--color-jitter", "0", "0", "0", "0"))
    assert parsed["cam"].color_jitter == settings.ColorJitter(0.0, 0.0, 0.0, 0.0)
    assert parsed["run"].seed == 4


def test_num_workers_is_a_count_or_auto() -> None:
    prop = settings.section_schema("affinity")["properties"]["num_workers"]
    assert prop["type"] == ["integer", "string"] and prop["default"] == 0
    assert settings.config_errors({"cam": {"num_workers": "auto"}}) == []
    assert settings.config_errors({"cam": {"num_workers": "all"}}) == [
        "key 'cam.num_workers': 'all' does not match '^auto$'"
    ]
    assert settings.typed_strings({"cam": {"num_workers": "2"}}) == {"cam": {"num_workers": 2}}
    assert _parse(_train_cam_args("--num-workers", "auto"))["cam"].num_workers == "auto"
    assert _parse(_train_cam_args("--num-workers", "3"))["cam"].num_workers == 3
    with pytest.raises(PsaError, match="key 'cam.num_workers': 'some' does not match"):
        _parse(_train_cam_args("--num-workers", "some"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--lr", "-1"), r"key 'cam.lr': -1.0 is less than or equal to the minimum of 0"),
        (("--resize-long", "9", "8"), r"section 'cam': \[9, 8\] has min > max"),
        (("--settings", '{"cam": {"lrr": 1}}'), r"unknown key 'cam.lrr'"),
        (("--settings", '{"pipeline": {}}'), r"--settings: unknown key 'pipeline'"),
        (("--settings", "{not json"), r"--settings: not a JSON object"),
        (("--settings", "missing.yaml"), r"--settings missing.yaml: no such file"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(extra: tuple, message: str) -> None:
    with pytest.raises(PsaError, match=message):
        _parse(_train_cam_args(*extra))


def test_settings_objects_are_frozen_and_typed() -> None:
    cam = settings.section_from("cam", {"resize_long": [96, 160], "lr": 1})
    assert cam.resize_long == (96, 160) and isinstance(cam.lr, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cam.lr = 0.5  # type: ignore[misc]


def test_module_constants_derive_from_the_settings() -> None:
    from psa_core import affinity, cam, crf, evaluate, optim, random_walk, transforms

    assert settings.CamInferSettings().scales == cam.DEFAULT_SCALES
    assert settings.CamEvaluateSettings().bg_threshold == evaluate.PUBLISHED_BG_THRESHOLD
    assert settings.CamSettings().poly_power == optim.POLY_POWER
    assert settings.CamSettings().crop_size == transforms.CROP_SIZE
    assert settings.AffinitySettings().radius == affinity.DEFAULT_RADIUS
    crf_defaults = settings.CrfSettings()
    assert crf_defaults.iterations == crf.CRF_ITERATIONS
    assert (crf_defaults.alpha_low, crf_defaults.alpha_high) == (crf.ALPHA_LOW, crf.ALPHA_HIGH)
    assert settings.RandomWalkSettings().beta == random_walk.DEFAULT_BETA


def test_the_flip_key_reaches_the_schema_the_options_and_the_augmentation() -> None:
    """A key added as one field (TrainSettings.flip) and used in one place."""
    from psa_core.transforms import (
        IMAGENET_NORMALIZATION,
        AffinityTrainTransform,
        CamTrainTransform,
        training_transform,
    )

    for path in ("cam", "affinity", "segmentation"):
        prop = settings.section_schema(path)["properties"]["flip"]
        assert prop["type"] == "boolean" and prop["default"] is True
    assert settings.complete_config({"affinity": {"flip": False}})["affinity"]["flip"] is False
    assert _parse(_train_cam_args("--no-flip"))["cam"].flip is False
    cam = training_transform(CamTrainTransform, IMAGENET_NORMALIZATION, settings.CamSettings())
    assert cam.flip is True
    off = settings.AffinitySettings(flip=False)
    assert training_transform(AffinityTrainTransform, IMAGENET_NORMALIZATION, off).flip is False


# -- checks of a whole config: strings from --config, output_dir, the file itself ---------


def test_typed_strings_reads_nested_command_line_values() -> None:
    given = {"cam": {"epochs": "3", "resize_long": ["160", "96"], "lr": "x"}, "device": "cpu"}
    typed = settings.typed_strings({**given, "dataset": {"classes": ["1", "cat"]}})
    assert typed["cam"] == {"epochs": 3, "resize_long": [160, 96], "lr": "x"}  # "x": for the schema
    assert typed["device"] == "cpu" and typed["dataset"]["classes"] == ["1", "cat"]


def test_output_dir_error(tmp_path: Path) -> None:
    work, checkout = tmp_path / "work", tmp_path / "checkout"
    work.mkdir()
    refused = {
        ".": "is the working folder",
        "..": "is the working folder",
        str(checkout): "holds the pipeline's checkout",
        str(checkout / "psa_core" / "out"): "inside the pipeline's own folder",
        ".snakemake/results": "inside Snakemake's own folder",
    }
    for output_dir, message in refused.items():
        error = settings.output_dir_error(output_dir, work, checkout)
        assert error and message in error and f"'{output_dir}'" in error, output_dir
    for fine in ("results", "runs/a b", str(checkout / "results"), str(tmp_path / "elsewhere")):
        assert settings.output_dir_error(fine, work, checkout) is None, fine
        assert settings.output_dir_error(fine, work, checkout, "VOC2012") is None, fine
    for inside in ("VOC2012", "VOC2012/results", str(work / "VOC2012" / "SegmentationClass")):
        error = settings.output_dir_error(inside, work, checkout, "VOC2012")
        assert error and "inside the dataset folder 'VOC2012'" in error, inside


def test_config_file_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    cases = {
        "": "config.yaml: is empty",
        "- a\n- b\n": "config.yaml: is a list, not keys",
        "cam:\n  lr: 0.1\n\tepochs: 3\n": "config.yaml, line 3, column 1: not valid YAML",
        "\ufeffcam: {lr: 0.1}\n": None,
    }
    for text, message in cases.items():
        path.write_text(text, encoding="utf-8")
        error = settings.config_file_error(path)
        assert (error is None) if message is None else (message in error), (text, error)
    path.write_bytes(b"cam: {lr: 0.1} # caf\xe9\n")
    assert "save it as UTF-8" in settings.config_file_error(path)
