"""Weight import: PSA / our own state dicts, MXNet ResNet-38, torchvision VGG-16.

`load_weights(model, path)` picks the reader from the file:

- `.params`: an MXNet NDArray list, read with numpy (`read_mxnet_params`). The
  ImageNet ResNet-38 of Wu et al. (`ilsvrc-cls_rna-a1_cls1000_ep-0001.params`)
  is renamed to our layer names (`mxnet_to_psa_name`, the mapping of PSA's
  `convert_mxnet_to_torch`) and loaded into the backbone, strictly; its
  1000-class classifier is dropped and the head keeps its initialisation.
- `.caffemodel`: refused with instructions (Caffe cannot be read without Caffe).
- anything else (`.pth`, `.pt`): a torch state dict through
  `psa_core.io.load_torch` (weights only). PSA's published checkpoints and our
  own files share the flat layout of `psa_core.models.nets`. A torchvision
  VGG-16 state dict (`features.N.*`, `classifier.N.*`) is recognised and
  converted for vgg16d (`torchvision_vgg16_to_psa`).

Matching is strict: every model key must be in the file with the same shape,
and no file key may be left over, except that BatchNorm `num_batches_tracked`
counters are ignored (frozen BN never uses them), a `module.` prefix from
DataParallel is removed, and with `backbone_only=True` (initial weights) the
head is not loaded and keys outside the backbone are skipped and reported.
Any mismatch is a PsaError naming the file and the first keys at fault.

MXNet file layout (src/ndarray/ndarray.cc, little-endian): u64 list magic
0x112, u64 reserved, u64 count, that many arrays, u64 name count, names as
(u64 length, bytes). Each array: u32 magic — 0xF993FAC9 (V2): i32 storage type,
shape as u32 ndim + i64 dims; 0xF993FACA (V3): same with an i32 ndim;
0xF993FAC8 (V1): no storage type, u32 ndim + i64 dims; any other value is the
ndim of a legacy array followed by u32 dims — then i32 device type, i32
device id, i32 dtype flag and the raw C-order data. An empty shape means an
empty array with nothing after the shape.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from psa_core.errors import PsaError
from psa_core.io import atomic_path, load_torch
from psa_core.models.nets import BN_COUNTER, PsaNet
from psa_core.models.resnet38d import ResNet38d
from psa_core.models.vgg16d import CONV_NAMES, VGG16d

MXNET_LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
NDARRAY_V3_MAGIC = 0xF993FACA

_MXNET_DTYPES: dict[int, np.dtype] = {
    flag: np.dtype(code)
    for flag, code in {
        0: "<f4",
        1: "<f8",
        2: "<f2",
        3: "u1",
        4: "<i4",
        5: "i1",
        6: "<i8",
        7: "?",
        8: "<i2",
        9: "<u2",
        10: "<u4",
        11: "<u8",
    }.items()
}
"""MXNet (mshadow) dtype flag → numpy dtype, little-endian as stored."""
_MAX_NDIM = 32
_SHOW = 5  # keys named in an error message


# -- MXNet NDArray files --------------------------------------------------------


class _Cursor:
    """Little-endian reads from a byte buffer; struct.error on truncation."""

    def __init__(self, buffer: bytearray) -> None:
        self.buffer = buffer
        self.pos = 0

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buffer, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def u32(self) -> int:
        return self.unpack("I")[0]

    def i32(self) -> int:
        return self.unpack("i")[0]

    def u64(self) -> int:
        return self.unpack("Q")[0]

    def array(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        if self.pos + nbytes > len(self.buffer):
            raise struct.error("array data runs past the end of the file")
        values = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.pos)
        self.pos += nbytes
        return values.reshape(shape)


def _read_ndarray(cur: _Cursor) -> np.ndarray | None:
    magic = cur.u32()
    if magic in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        stype = cur.i32()
        ndim = cur.u32() if magic == NDARRAY_V2_MAGIC else cur.i32()
        if ndim > _MAX_NDIM:
            raise ValueError(f"implausible array rank {ndim}")
        shape = cur.unpack(f"{ndim}q") if ndim > 0 else ()
        empty = ndim < 0 or any(d < 0 for d in shape) or (magic == NDARRAY_V2_MAGIC and ndim == 0)
        if empty:
            return None
        if stype != 0:
            raise ValueError(f"sparse array (storage type {stype}) is not supported")
    elif magic == NDARRAY_V1_MAGIC:
        ndim = cur.u32()
        if ndim > _MAX_NDIM:
            raise ValueError(f"implausible array rank {ndim}")
        shape = cur.unpack(f"{ndim}q")
        if ndim == 0:
            return None
    else:
        ndim = magic  # legacy arrays start with their rank
        if ndim > _MAX_NDIM:
            raise ValueError(f"unknown array header 0x{magic:08x}")
        shape = cur.unpack(f"{ndim}I")
        if ndim == 0:
            return None
    cur.unpack("ii")  # device type and id: we always load to CPU
    flag = cur.i32()
    if flag not in _MXNET_DTYPES:
        raise ValueError(f"unsupported dtype flag {flag}")
    return cur.array(_MXNET_DTYPES[flag], tuple(shape))


def read_mxnet_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an MXNet `.params` / `nd.save` file into {name: array}, names verbatim.

    Names keep MXNet's `arg:` / `aux:` prefixes. Arrays are little-endian
    numpy views on one writable buffer. Empty (`None`) arrays are left out.

    Raises:
        PsaError: missing, truncated or not an MXNet NDArray list.
    """
    path = Path(path)
    if not path.is_file():
        raise PsaError(f"{path}: weights file not found; check the path in config.yaml")
    buffer = bytearray(path.stat().st_size)
    with path.open("rb") as f:
        f.readinto(buffer)
    cur = _Cursor(buffer)
    try:
        header, _reserved = cur.unpack("QQ")
        if header != MXNET_LIST_MAGIC:
            raise PsaError(
                f"{path}: not an MXNet .params file (header 0x{header:x}, expected 0x112); "
                "download the file again or name a .pth state dict instead"
            )
        count = cur.u64()
        if count > len(buffer):
            raise ValueError(f"implausible array count {count}")
        arrays = [_read_ndarray(cur) for _ in range(count)]
        name_count = cur.u64()
        if name_count > len(buffer):
            raise ValueError(f"implausible name count {name_count}")
        names = []
        for _ in range(name_count):
            length = cur.u64()
            if cur.pos + length > len(buffer):
                raise struct.error("name runs past the end of the file")
            names.append(bytes(buffer[cur.pos : cur.pos + length]).decode("utf-8"))
            cur.pos += length
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise PsaError(
            f"{path}: cannot parse as an MXNet .params file ({exc}); it is truncated, corrupt or "
            "of an unsupported kind: download it again"
        ) from None
    if name_count != count:
        raise PsaError(
            f"{path}: MXNet file holds {count} arrays but {name_count} names; only named "
            "parameter files (mx.nd.save of a dict, or a checkpoint's .params) can be imported"
        )
    return {name: array for name, array in zip(names, arrays, strict=True) if array is not None}


def write_mxnet_params(
    path: str | os.PathLike, arrays: Mapping[str, np.ndarray], version: int = 2
) -> None:
    """Write {name: array} in MXNet's NDArray-list format (the inverse of `read_mxnet_params`).

    Args:
        version: array header layout, 2 (current MXNet, dense storage), 1, or 0
            (legacy: no magic, u32 dims).
    """
    if version not in (0, 1, 2):
        raise ValueError(f"MXNet array version {version}: use 0, 1 or 2")
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(struct.pack("<QQQ", MXNET_LIST_MAGIC, 0, len(arrays)))
        for name, array in arrays.items():
            array = np.asarray(array)
            flag = _mxnet_dtype_flag(array.dtype)
            if flag is None:
                raise ValueError(f"{name}: dtype {array.dtype} has no MXNet flag")
            if array.ndim == 0:
                raise ValueError(f"{name}: MXNet stores scalars as shape (1,), not ()")
            if version == 2:
                f.write(struct.pack("<Ii", NDARRAY_V2_MAGIC, 0))  # dense storage
            elif version == 1:
                f.write(struct.pack("<I", NDARRAY_V1_MAGIC))
            dims = "I" if version == 0 else "q"
            f.write(struct.pack(f"<I{array.ndim}{dims}", array.ndim, *array.shape))
            f.write(struct.pack("<iii", 1, 0, flag))  # cpu(0), dtype flag
            f.write(np.ascontiguousarray(array, dtype=_MXNET_DTYPES[flag]).tobytes())
        f.write(struct.pack("<Q", len(arrays)))
        for name in arrays:
            encoded = name.encode("utf-8")
            f.write(struct.pack("<Q", len(encoded)) + encoded)


def _mxnet_dtype_flag(dtype: np.dtype) -> int | None:
    for flag, stored in _MXNET_DTYPES.items():
        if dtype.kind == stored.kind and dtype.itemsize == stored.itemsize:
            return flag
    return None


# -- name mappings --------------------------------------------------------------

_MX_BN_PARAMS = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_var": "running_var",
}
_MX_BLOCK = re.compile(
    r"(?P<kind>res|bn)(?P<stage>\d+)(?P<pos>a|b\d+)_(?P<branch>branch[0-9a-z]+)_"
    r"(?P<param>weight|gamma|beta|moving_mean|moving_var)"
)
_MX_BN7 = re.compile(r"bn7_(?P<param>gamma|beta|moving_mean|moving_var)")
_MX_CLASSIFIER = re.compile(r"linear\d+_(weight|bias)")


def mxnet_to_psa_name(name: str) -> str | None:
    """Our ResNet-38 key for an MXNet ResNet-38 (model A1) parameter name.

    `arg:`/`aux:` prefixes are ignored. `res4b3_branch2a_weight` →
    `b4_3.conv_branch2a.weight`; `bn5a_branch1_moving_var` → … ; `bn7_gamma`
    → `bn7.weight`; `conv1a_weight` → `conv1a.weight`. Returns None for the
    ImageNet classifier (`linear1000_*`), which PSA does not use.

    Raises:
        KeyError: a name that is not part of ResNet-38.
    """
    bare = name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name
    if bare == "conv1a_weight":
        return "conv1a.weight"
    if _MX_CLASSIFIER.fullmatch(bare):
        return None
    if match := _MX_BN7.fullmatch(bare):
        return f"bn7.{_MX_BN_PARAMS[match['param']]}"
    match = _MX_BLOCK.fullmatch(bare)
    if match is None:
        raise KeyError(name)
    pos = match["pos"]
    block = f"b{match['stage']}" if pos == "a" else f"b{match['stage']}_{pos[1:]}"
    if match["kind"] == "res":
        if match["param"] != "weight":
            raise KeyError(name)
        return f"{block}.conv_{match['branch']}.weight"
    if match["param"] == "weight":
        raise KeyError(name)
    return f"{block}.bn_{match['branch']}.{_MX_BN_PARAMS[match['param']]}"


TORCHVISION_VGG16_CONVS: dict[int, str] = dict(
    zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), CONV_NAMES, strict=True)
)
"""torchvision `vgg16().features` index → our conv name."""

FC_DECIMATION = 4
"""fc6/fc7 keep every 4th of torchvision's 4096 units (→ 1024), as DeepLab-LargeFOV did."""
FC6_TAPS = (0, 3, 6)
"""Rows/columns of torchvision's 7×7 fc6 kernel kept for our 3×3 fc6."""


def torchvision_vgg16_to_psa(state: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Convert a torchvision VGG-16 state dict to vgg16d keys.

    The 13 convolutions map one to one. torchvision's fully connected layers
    do not fit PSA's fc6 (3×3 conv, 1024 filters) and fc7 (1×1, 1024): they are
    decimated the way DeepLab-LargeFOV built its `vgg16_20M` initialisation —
    every 4th unit of fc6 and fc7 (and every 4th input of fc7), and kernel taps
    0, 3, 6 of fc6's 7×7 window — without rescaling. The result is an
    approximation of DeepLab's file, not a copy, and only an initialisation
    (fc6/fc7 train at the base learning rate). The 1000-class layer is dropped.

    Returns:
        (state dict with conv1_1.weight … fc7.bias, notes)
    """
    out: dict[str, torch.Tensor] = {}
    for index, name in TORCHVISION_VGG16_CONVS.items():
        for param in ("weight", "bias"):
            key = f"features.{index}.{param}"
            if key in state:
                out[f"{name}.{param}"] = state[key]
    notes = ["torchvision VGG-16: 13 convolutions loaded by position"]
    fc6_w, fc6_b = state.get("classifier.0.weight"), state.get("classifier.0.bias")
    fc7_w, fc7_b = state.get("classifier.3.weight"), state.get("classifier.3.bias")
    fc_shapes_ok = (
        fc6_w is not None
        and tuple(fc6_w.shape) == (4096, 512 * 7 * 7)
        and fc6_b is not None
        and fc7_w is not None
        and tuple(fc7_w.shape) == (4096, 4096)
        and fc7_b is not None
    )
    if fc_shapes_ok:
        taps = list(FC6_TAPS)
        kernel = fc6_w.reshape(4096, 512, 7, 7)[::FC_DECIMATION][:, :, taps][:, :, :, taps]
        out["fc6.weight"] = kernel.contiguous()
        out["fc6.bias"] = fc6_b[::FC_DECIMATION].contiguous()
        out["fc7.weight"] = fc7_w[::FC_DECIMATION, ::FC_DECIMATION].reshape(1024, 1024, 1, 1)
        out["fc7.bias"] = fc7_b[::FC_DECIMATION].contiguous()
        notes.append(
            "fc6/fc7 decimated from torchvision's 4096-unit layers as DeepLab-LargeFOV did "
            "(every 4th unit, fc6 kernel taps 0/3/6); an approximation of vgg16_20M"
        )
    return out, notes


# -- loading --------------------------------------------------------------------


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    backbone_only: bool = False,
    assign: bool = False,
) -> list[str]:
    """Load weights from `path` into `model` (a `PsaNet` or a bare backbone), strictly.

    Args:
        model: from `psa_core.models.build_model`.
        path: `.pth`/`.pt` state dict (PSA published, ours, torchvision VGG-16)
            or MXNet `.params` (ImageNet ResNet-38).
        backbone_only: load the backbone only (initial weights, e.g. the
            affinity net from CAM weights); the head keeps its initialisation
            and file keys outside the backbone are skipped. ImageNet files are
            always backbone-only.
        assign: the file's tensors (as float32) become the model's, instead of
            being copied in: for a model built on the meta device, whose
            every tensor the file then provides (`create_model`).

    Returns:
        Short human-readable notes on what was loaded.

    Raises:
        PsaError: unreadable file, wrong format for this backbone, or keys /
            shapes that do not match (the message names the first ones).
    """
    path = Path(path)
    backbone = model.backbone if isinstance(model, PsaNet) else model
    if path.suffix.lower() == ".caffemodel":
        raise PsaError(
            f"{path}: Caffe models cannot be read here. Convert it to a PyTorch state dict "
            "with keys conv1_1.weight … fc7.bias (e.g. PSA's convert_caffe_to_torch in a Caffe "
            "environment, then torch.save(state_dict, 'vgg16_20M.pth')), or use torchvision's "
            "vgg16 weights (vgg16-397923af.pth), which load directly"
        )
    if path.suffix.lower() == ".params":
        if not isinstance(backbone, ResNet38d):
            raise PsaError(
                f"{path}: MXNet .params files hold the ImageNet ResNet-38; the model's backbone "
                f"is {type(backbone).__name__}: set backbone: resnet38d or use a .pth file"
            )
        state, notes = _from_mxnet(read_mxnet_params(path), path)
        backbone_only = True
    else:
        state, notes = _state_dict_of(load_torch(path, "weights"), path)
        if any(key.startswith("features.") for key in state):
            if not isinstance(backbone, VGG16d):
                raise PsaError(
                    f"{path}: looks like a torchvision VGG state dict (features.N.*), but the "
                    f"model's backbone is {type(backbone).__name__}: set backbone: vgg16d"
                )
            state, vgg_notes = torchvision_vgg16_to_psa(state)
            notes += vgg_notes
            backbone_only = True
    state = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] != BN_COUNTER}

    skipped: list[str] = []
    if backbone_only or model is backbone:
        target = backbone
        expected = _flat_shapes(backbone)
        if model is not backbone:
            skipped = sorted(set(state) - set(expected))
            state = {k: v for k, v in state.items() if k in expected}
    else:
        target = model
        expected = _flat_shapes(model)
    _check(state, expected, path, model, backbone_only=target is backbone, skipped=skipped)
    if skipped:
        notes.append(f"skipped {len(skipped)} key(s) outside the backbone: {_few(skipped)}")
    # Keys and shapes are verified above. A bare backbone has no hook to fill in the
    # BN counters, hence strict=False there; the PsaNet hooks make strict loading work.
    if assign:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    target.load_state_dict(state, strict=isinstance(target, PsaNet), assign=assign)
    partial = target is backbone and model is not backbone
    notes.insert(
        0, f"{path.name}: loaded {len(state)} tensors into the {'backbone' if partial else 'model'}"
    )
    if partial:
        notes.append("head layers keep their initialisation")
    return notes


def _from_mxnet(arrays: Mapping[str, np.ndarray], path: Path) -> tuple[dict, list[str]]:
    state: dict[str, torch.Tensor] = {}
    unknown = []
    dropped = 0
    for name, array in arrays.items():
        try:
            key = mxnet_to_psa_name(name)
        except KeyError:
            unknown.append(name)
            continue
        if key is None:
            dropped += 1
            continue
        state[key] = torch.from_numpy(array)
    if unknown:
        raise PsaError(
            f"{path}: {len(unknown)} MXNet parameter(s) are not part of ResNet-38 "
            f"({_few(unknown)}); the importer reads the ImageNet ResNet-38 model A1 "
            "(ilsvrc-cls_rna-a1_cls1000_ep-0001.params) only"
        )
    notes = ["MXNet ImageNet ResNet-38: names mapped to the backbone"]
    if dropped:
        notes.append(f"dropped the ImageNet classifier ({dropped} arrays)")
    return state, notes


def _state_dict_of(obj: Mapping, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    notes: list[str] = []
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for wrapper in ("state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and all(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                obj = inner
                notes.append(f"took the state dict under '{wrapper}'")
                break
        else:
            raise PsaError(
                f"{path}: not a state dict (a dict of tensors); keys found: "
                f"{_few(sorted(map(str, obj)))}; save model.state_dict() with torch.save"
            )
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
        notes.append("removed the DataParallel 'module.' prefix")
    return state, notes


def _flat_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {
        k: tuple(v.shape)
        for k, v in module.state_dict().items()
        if k.rsplit(".", 1)[-1] != BN_COUNTER
    }


def _check(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    path: Path,
    model: nn.Module,
    *,
    backbone_only: bool,
    skipped: list[str],
) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {'; '.join(mismatched[:_SHOW])}")
    if skipped:
        problems.append(f"{len(skipped)} file key(s) outside the backbone skipped: {_few(skipped)}")
    backbone = model.backbone if isinstance(model, PsaNet) else model
    head_names = {n for n, _ in model.head.named_children()} if isinstance(model, PsaNet) else set()
    only_head_missing = missing and all(k.partition(".")[0] in head_names for k in missing)
    if only_head_missing and not unexpected and not mismatched and not backbone_only:
        hint = (
            "only head layers are missing: this is a backbone / initial-weights file; load it as "
            "initial weights (backbone_only) or name the trained checkpoint instead"
        )
    else:
        hint = (
            "check that backbone/head in config.yaml match the network these weights were "
            "trained for (and num_classes for CAM weights)"
        )
    raise PsaError(
        f"{path}: weights do not fit the {type(backbone).__name__} "
        f"{type(model).__name__} model: {', '.join(problems)}; {hint}"
    )


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (", …" if len(keys) > _SHOW else "")
