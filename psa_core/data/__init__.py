"""Datasets: the VOC devkit layout, the split index and labels artifact, shards,
and the synthetic dataset (docs/design.md §2)."""

from psa_core.data.index import (
    CLASSES_FILE,
    check_names,
    image_paths,
    index_split,
    num_shards,
    read_classes,
    read_labels,
    select_shard,
    shard_slice,
    verified_image_size,
    write_labels,
)
from psa_core.data.synthetic import SYNTHETIC_CLASSES
from psa_core.data.synthetic import generate as generate_synthetic
from psa_core.data.voc import (
    annotation_path,
    available_splits,
    check_root,
    gt_mask_path,
    image_list_path,
    image_path,
    labels_from_mask,
    labels_from_xml,
    read_image_list,
)

__all__ = [
    "CLASSES_FILE",
    "SYNTHETIC_CLASSES",
    "annotation_path",
    "available_splits",
    "check_names",
    "check_root",
    "generate_synthetic",
    "gt_mask_path",
    "image_list_path",
    "image_path",
    "image_paths",
    "verified_image_size",
    "index_split",
    "labels_from_mask",
    "labels_from_xml",
    "num_shards",
    "read_classes",
    "read_image_list",
    "read_labels",
    "select_shard",
    "shard_slice",
    "write_labels",
]
