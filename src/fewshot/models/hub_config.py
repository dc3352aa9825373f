"""The two JSON files of a Hugging Face vision model, read through one declared schema each.

A ``save_pretrained`` folder describes its network in ``config.json`` and its image
preparation in ``preprocessor_config.json``. Both are read with fewshot's bounded JSON
reader and checked field by field *before* anything is built, so a wrongly typed field
(``"num_channels": "abc"``, ``image_std`` as strings) or an absurd size (a ``crop_size`` of
10**9, a hidden width of 10**7) is one line naming the file and the field, never a
traceback from deep inside ``transformers`` or an allocation of gigabytes. A config that
names another model to fetch (``"backbone": "microsoft/resnet-50"``, as DPT-style configs
do) is refused: fewshot never downloads what a file names.

:class:`HubPreprocessing` is the image processor's recipe (resize, centre crop, rescale,
normalise, as ``transformers``' own processors apply it), run with Pillow on the user's
images: ``transformers``' fast processors need torchvision, which fewshot does not require.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data.images import MAX_PIXELS
from ..errors import CheckpointError, DataError
from ..io import read_json

#: Largest config or preprocessor file read (real ones are a few kB; id2label of 22k classes ~1 MB).
MAX_CONFIG_BYTES = 4 << 20
#: Largest image side a preprocessor may ask for: the bound on every image fewshot decodes (8,192).
MAX_SIDE = 8192
#: Most channels an image may have.
MAX_CHANNELS = 16
#: Largest width of a layer (hidden size, embedding size, MLP width) a config may declare.
MAX_WIDTH = 1 << 16
#: Most layers (per stage or in all) a config may declare.
MAX_LAYERS = 256
#: Most classes a classifier head may declare.
MAX_LABELS = 100_000
#: Any other integer in a config is bounded by this (vocabulary sizes, position counts, ids).
MAX_INT = 1 << 24
#: Configs nest sub-configs (CLIP's vision_config, DPT's backbone_config); these are checked too.
SUB_CONFIGS = ("vision_config", "backbone_config", "text_config", "encoder_config")

# Declared fields of config.json: name -> (kind, low, high). "ints" is a list of ints,
# "int_or_ints" either.
_CONFIG_FIELDS: dict[str, tuple[str, float, float]] = {
    "num_channels": ("int", 1, MAX_CHANNELS),
    "image_size": ("int_or_ints", 1, MAX_SIDE),
    "patch_size": ("int_or_ints", 1, MAX_SIDE),
    "hidden_size": ("int", 1, MAX_WIDTH),
    "embedding_size": ("int", 1, MAX_WIDTH),
    "intermediate_size": ("int", 1, MAX_WIDTH * 4),
    "projection_dim": ("int", 1, MAX_WIDTH),
    "hidden_sizes": ("ints", 1, MAX_WIDTH),
    "depths": ("ints", 0, MAX_LAYERS),
    "num_hidden_layers": ("int", 0, MAX_LAYERS),
    "num_attention_heads": ("int_or_ints", 1, 4096),
    "num_labels": ("int", 0, MAX_LABELS),
    "mlp_ratio": ("number", 0, 64),
    "layer_norm_eps": ("number", 0, 1),
    "model_type": ("str", 1, 100),
    "hidden_act": ("str", 1, 100),
    "layer_type": ("str", 1, 100),
    "backbone": ("str_or_null", 0, 300),
    "use_pretrained_backbone": ("bool", 0, 1),
    "use_timm_backbone": ("bool", 0, 1),
}

_PROCESSOR_BOOLS = ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb")
#: Pillow's resampling filters by the number transformers stores (PIL.Image.Resampling values).
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _bad(path: Path, field: str, wanted: str, value: Any) -> CheckpointError:
    return CheckpointError(f"{path}: field '{field}' must be {wanted}, got {str(value)[:60]!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _check_field(path: Path, field: str, value: Any, kind: str, low: float, high: float) -> None:
    if kind == "int" and not (_is_int(value) and low <= value <= high):
        raise _bad(path, field, f"an integer from {low:,} to {high:,}", value)
    if kind == "int_or_ints":  # one value, or one per stage (Swin's heads, PVT's patch sizes)
        values = value if isinstance(value, list) and 0 < len(value) <= 16 else [value]
        if not all(_is_int(v) and low <= v <= high for v in values):
            raise _bad(path, field, f"an integer (or a list of up to 16) from {low} to {high:,}", value)
    if kind == "ints" and not (isinstance(value, list) and 0 < len(value) <= 16
                               and all(_is_int(v) and low <= v <= high for v in value)):
        raise _bad(path, field, f"a list of 1 to 16 integers from {low} to {high:,}", value)
    if kind == "number" and not (_is_number(value) and low <= value <= high):
        raise _bad(path, field, f"a finite number from {low} to {high}", value)
    if kind == "str" and not (isinstance(value, str) and low <= len(value) <= high):
        raise _bad(path, field, f"a string of at most {int(high)} characters", value)
    if kind == "str_or_null" and not (value is None or (isinstance(value, str) and len(value) <= high)):
        raise _bad(path, field, "a string or null", value)
    if kind == "bool" and not isinstance(value, bool):
        raise _bad(path, field, "true or false", value)


def _check_values(path: Path, value: Any, where: str) -> None:
    """Every number anywhere in the file finite and every integer bounded (no 10**4300-digit sizes)."""
    stack = [(value, where)]
    while stack:
        item, name = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, f"{name}.{k}" if name else str(k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{name}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            raise _bad(path, name, "a finite number", item)
        elif _is_int(item) and abs(item) > MAX_INT:
            raise _bad(path, name, f"at most {MAX_INT:,} in size", item)


def _check_config(path: Path, config: dict, prefix: str = "") -> None:
    for field, (kind, low, high) in _CONFIG_FIELDS.items():
        if field in config and not (field == "backbone" and config[field] is None):
            _check_field(path, prefix + field, config[field], kind, low, high)
    if config.get("auto_map"):
        raise CheckpointError(f"{path}: the config names custom code (auto_map); fewshot loads only models "
                              f"transformers implements itself")
    if config.get("backbone") or config.get("use_timm_backbone"):
        # transformers would fetch the named model (its config at least) from the hub or timm.
        raise CheckpointError(
            f"{path}: field '{prefix}backbone' names a model to fetch ({str(config.get('backbone'))[:80]!r}"
            f"{', use_pretrained_backbone' if config.get('use_pretrained_backbone') else ''}); fewshot never "
            f"downloads what a config names: save the complete model (backbone included) with save_pretrained "
            f"and give that folder")
    labels = config.get("id2label")
    if labels is not None and not (isinstance(labels, dict) and len(labels) <= MAX_LABELS
                                   and all(isinstance(v, str) and len(v) <= 1000 for v in labels.values())):
        raise _bad(path, prefix + "id2label", f"an object of at most {MAX_LABELS:,} class names", labels)
    if labels and not all(k.isdigit() and int(k) < len(labels) for k in labels):
        raise _bad(path, prefix + "id2label", "keyed by the class indices 0, 1, ...", list(labels)[:4])
    for sub in SUB_CONFIGS:
        if sub in config and config[sub] is not None:
            if not isinstance(config[sub], dict):
                raise _bad(path, prefix + sub, "a JSON object", config[sub])
            _check_config(path, config[sub], f"{prefix}{sub}.")


def read_hub_config(path: str | Path) -> dict:
    """``config.json`` as a dict, every declared field checked (one-line CheckpointError naming it)."""
    path = Path(path)
    return check_hub_config(read_json(path, CheckpointError, MAX_CONFIG_BYTES), path)


def check_hub_config(config: Any, label: str | Path) -> dict:
    """``config`` (a Hugging Face config as plain JSON, from ``label``) checked against the schema."""
    path = Path(label)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    if not isinstance(config.get("model_type"), str):
        raise _bad(path, "model_type", "the name of a transformers model type", config.get("model_type"))
    _check_values(path, config, "")
    _check_config(path, config)
    architectures = config.get("architectures")
    if architectures is not None and not (isinstance(architectures, list) and len(architectures) <= 16
                                          and all(isinstance(a, str) and len(a) <= 200 for a in architectures)):
        raise _bad(path, "architectures", "a list of class names", architectures)
    return config


@dataclass(frozen=True)
class HubPreprocessing:
    """A model's own image preparation (its ``preprocessor_config.json``), applied with Pillow.

    ``resize``: ``("exact", h, w)`` warps to that size; ``("shortest", s)`` scales the
    shorter side to ``s`` keeping the aspect ratio; ``None`` keeps the size. ``crop``: the
    centre crop ``(h, w)`` taken next, or ``None``. Pixels are then multiplied by
    ``rescale`` (1/255 for 8-bit images, as transformers does) and the backbone
    normalises them with ``mean`` and ``std``.
    """

    resize: tuple | None
    crop: tuple[int, int] | None
    resample: int = 2
    rescale: float = 1 / 255
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channels: int = 3

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the tensors :meth:`prepare` returns."""
        if self.crop is not None:
            return self.crop
        if self.resize is not None and self.resize[0] == "exact":
            return (self.resize[1], self.resize[2])
        side = self.resize[1] if self.resize is not None else 224
        return (side, side)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["resample_name"] = RESAMPLE_NAMES.get(self.resample, str(self.resample))
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    def prepare(self, images: Sequence[Any]) -> torch.Tensor:
        """Images (paths, PIL images, arrays or tensors of one image: uint8 pixels, or floats in [0, 1]
        as fewshot's datasets hold them, channels first or last) as a float tensor ``(n, c, h, w)``."""
        return torch.stack([self._one(image, f"images[{i}]") for i, image in enumerate(images)])

    def _one(self, item: Any, what: str) -> torch.Tensor:
        from PIL import Image

        image = open_image(item, what)
        image = image.convert("L" if self.channels == 1 else "RGB")
        resample = Image.Resampling(self.resample)
        w, h = image.size
        if self.resize is not None and self.resize[0] == "exact":
            image = image.resize((self.resize[2], self.resize[1]), resample)
        elif self.resize is not None:
            side = self.resize[1]
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = side, int(side * long / short)
            image = image.resize((new_short, new_long) if w <= h else (new_long, new_short), resample)
        if self.crop is not None:
            ch, cw = self.crop
            w, h = image.size
            if w < cw or h < ch:  # pad like transformers' center_crop (zeros around the image)
                canvas = Image.new(image.mode, (max(w, cw), max(h, ch)))
                canvas.paste(image, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
                image, (w, h) = canvas, canvas.size
            top, left = (h - ch) // 2, (w - cw) // 2
            image = image.crop((left, top, left + cw, top + ch))
        array = np.asarray(image, dtype=np.float32)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array)) * self.rescale


def open_image(item: Any, what: str):
    """A path, PIL image or image array as a PIL image: bounded before decoding, EXIF orientation applied."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(item, Image.Image):
        return ImageOps.exif_transpose(item)
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return Image.fromarray(_pixels(item, what))
    if not isinstance(item, (str, Path)):
        raise DataError(f"{what}: expected a file path, a PIL image or an image array, got {type(item).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(item) as image:
                if image.size[0] * image.size[1] > MAX_PIXELS:
                    raise DataError(f"{what}: {item} claims {image.size[0]}x{image.size[1]} pixels, more than "
                                    f"{MAX_PIXELS:,}; it is damaged or hostile: remove it")
                image.load()
                if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                    # 16-bit grey scaled to 8 bits (PIL's own conversion clips everything above 255 to white)
                    values = np.asarray(image, dtype=np.float64)
                    top = 255 if image.mode == "I" and values.max(initial=0) <= 255 else 65535
                    image = Image.fromarray(np.rint(values.clip(0, top) * (255 / top)).astype(np.uint8), "L")
                return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise DataError(f"{what}: {item} is not a readable image ({e}); fix or remove it") from None


def _pixels(item: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """One image array as uint8 (h, w) or (h, w, c): uint8 pixels as they are, floats in [0, 1] (a
    fewshot dataset's tensors) times 255, rounded; channels first or last."""
    array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise DataError(f"{what}: expected one image (h, w), (h, w, c) or (c, h, w) with c of 1, 3 or 4; got shape "
                        f"{tuple(array.shape)}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or array.min(initial=0) < 0 or array.max(initial=0) > 1:
            raise DataError(f"{what}: float pixels must lie in [0, 1] (uint8 pixels are taken as they are)")
        array = np.rint(array * 255)
    elif array.dtype != np.uint8:
        raise DataError(f"{what}: expected uint8 pixels or floats in [0, 1], got {array.dtype}")
    array = np.ascontiguousarray(array.astype(np.uint8))
    return array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array


def _side(path: Path, field: str, value: Any) -> Any:
    """A processor size: an int, {"height", "width"} or {"shortest_edge"[, "longest_edge"]}, sides bounded."""
    sides = value.values() if isinstance(value, dict) else [value]
    keys_ok = not isinstance(value, dict) or (set(value) <= {"height", "width", "shortest_edge", "longest_edge"}
                                              and ({"height", "width"} <= set(value) or "shortest_edge" in value))
    if not keys_ok or not all(_is_int(v) and 1 <= v <= MAX_SIDE for v in sides):
        raise _bad(path, field, f"an integer or {{height, width}} / {{shortest_edge}} of integers from 1 to {MAX_SIDE:,}",
                   value)
    return value


def _stats(path: Path, field: str, value: Any, channels: int, positive: bool) -> tuple[float, ...]:
    values = [value] * channels if _is_number(value) else value
    if not (isinstance(values, list) and len(values) == channels and all(_is_number(v) for v in values)
            and (not positive or min(values) > 0)):
        raise _bad(path, field, f"{channels} finite numbers{' above 0' if positive else ''}", value)
    return tuple(float(v) for v in values)


def read_preprocessing(folder: str | Path, channels: int, image_size: int | None = None) -> HubPreprocessing:
    """The :class:`HubPreprocessing` of ``folder/preprocessor_config.json`` (every field checked),
    or, without that file, a warp to ``image_size`` (else 224) with ImageNet statistics."""
    path = Path(folder) / "preprocessor_config.json"
    default_stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if channels == 3 else ((0.5,) * channels,
                                                                                          (0.5,) * channels)
    if not path.exists():
        side = image_size or 224
        return HubPreprocessing(("exact", side, side), None, 2, 1 / 255, *default_stats, channels)
    pre = read_json(path, CheckpointError, MAX_CONFIG_BYTES)
    if not isinstance(pre, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    _check_values(path, pre, "")
    for field in _PROCESSOR_BOOLS:
        if field in pre:
            _check_field(path, field, pre[field], "bool", 0, 1)
    for field in ("size", "crop_size"):
        if pre.get(field) is not None:
            _side(path, field, pre[field])
    if "resample" in pre and not (_is_int(pre["resample"]) and pre["resample"] in RESAMPLE_NAMES):
        raise _bad(path, "resample", "a Pillow filter number 0-5", pre["resample"])
    if "rescale_factor" in pre:
        _check_field(path, "rescale_factor", pre["rescale_factor"], "number", 1e-9, 1e9)
    if pre.get("crop_pct") is not None:
        _check_field(path, "crop_pct", pre["crop_pct"], "number", 0.01, 1)
    mean, std = default_stats
    if pre.get("do_normalize", True):
        mean = _stats(path, "image_mean", pre.get("image_mean", list(mean)), channels, False)
        std = _stats(path, "image_std", pre.get("image_std", list(std)), channels, True)
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    size = pre.get("size")
    resize: tuple | None = None
    if pre.get("do_resize", True) and size is not None:
        if _is_int(size):
            resize = ("exact", size, size)
        elif "height" in size:
            resize = ("exact", size["height"], size["width"])
        else:
            resize = ("shortest", size["shortest_edge"])
    crop = None
    if pre.get("do_center_crop", False) and pre.get("crop_size") is not None:
        c = pre["crop_size"]
        crop = (c, c) if _is_int(c) else (c["height"], c["width"]) if "height" in c else (c["shortest_edge"],) * 2
    elif resize is not None and resize[0] == "shortest" and pre.get("crop_pct") and resize[1] < 384:
        # ConvNeXt's recipe: resize to shortest_edge / crop_pct, then centre-crop shortest_edge.
        crop = (resize[1], resize[1])
        resize = ("shortest", int(resize[1] / pre["crop_pct"]))
    elif resize is not None and resize[0] == "shortest" and pre.get("crop_pct"):
        resize = ("exact", resize[1], resize[1])  # ConvNeXt at 384 px and above: a plain warp
    elif resize is not None and resize[0] == "shortest":
        crop = (resize[1], resize[1])  # no crop named: a square one, so that images of any shape batch
    rescale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    return HubPreprocessing(resize, crop, int(pre.get("resample", 2)), rescale, mean, std, channels)


__all__ = ["HubPreprocessing", "MAX_CHANNELS", "MAX_SIDE", "MAX_WIDTH", "check_hub_config", "open_image", "read_hub_config",
           "read_preprocessing"]
