"""`psa config-schema`: the JSON schema of config.yaml, generated from psa_core.settings."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from psa_core import io
from psa_core.settings import config_schema


def print_schema(*, out: Path | None) -> None:
    """`psa config-schema`: the schema of config.yaml: every key, its default, allowed
    values and description, as YAML.

    Args:
        out: write it to this file instead of standard output (.yaml).
    """
    text = yaml.safe_dump(config_schema(), sort_keys=False, width=100, allow_unicode=True)
    if out is None:
        sys.stdout.write(text)
    else:
        with io.atomic_path(out) as tmp:
            Path(tmp).write_text(text)
