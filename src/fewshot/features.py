"""Features of images, computed once per backbone and preprocessing: a content-keyed cache.

With a frozen pre-trained backbone, 600 evaluation episodes over one image set need each
image's features once, not once per episode. :func:`embed` keys every image by

    sha256(backbone fingerprint, preprocessing settings, image content)

where the image content is the bytes of its file (or the pixels and shape of an array or
PIL image) and the backbone fingerprint is a hash of every tensor of its ``state_dict``
(:func:`fingerprint`): a changed weight, a changed resize or normalisation, or an edited
image file is a new key, never a stale feature. Features live in a :class:`FeatureCache`:
in memory (least recently used entries dropped past a byte budget) and, when it has a
folder (``FeatureCache.from_env()``: ``$FEWSHOT_CACHE/features``), on disk as one small
safetensors file per image, written atomically and checked on read (one finite 1-D
float32 tensor named ``features``); a file that fails the check is recomputed and
rewritten, as any cache entry would be, and vectors of two widths for one backbone
(only a hand-edited cache holds them) are refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ConfigError, DataError
from .io import load_tensors, read_bounded, save_tensors

#: The default memory budget of a FeatureCache (features of ~130k images of width 1024).
DEFAULT_MAX_BYTES = 512 << 20
#: The largest image file hashed for a key (the decoder bounds pixels; this bounds bytes).
MAX_IMAGE_BYTES = 256 << 20


# module -> (the stamp of its tensors when hashed, the hash): hashing 100 MB of weights
# takes a fraction of a second, and 600 episodes over one backbone need it once.
_FINGERPRINTS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer (non-persistent ones too: a HubBackbone's mean and std), by name."""
    return sorted([*module.named_parameters(), *module.named_buffers()], key=lambda item: item[0])


def fingerprint(module: nn.Module) -> str:
    """A hash of ``module``'s class and every parameter and buffer (names, dtypes, shapes, values).

    The hash is remembered with a stamp of the tensors (identity, storage and PyTorch's
    in-place version counter), so it is recomputed exactly when a weight changed: an
    optimiser step, ``p.add_(...)``, ``load_state_dict`` or a replaced tensor.
    """
    tensors = _tensors(module)
    stamp = tuple((name, id(t), t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for name, t in tensors)
    known = _FINGERPRINTS.get(module)
    if known is not None and known[0] == stamp:
        return known[1]
    digest = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in tensors:
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"\0{name}\0{t.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    _FINGERPRINTS[module] = (stamp, digest.hexdigest())
    return digest.hexdigest()


def image_key(item: Any, what: str = "image") -> str:
    """A hash of an image's content: its file's bytes, or an array's dtype, shape and values, or a PIL image's pixels."""
    digest = hashlib.sha256()
    if isinstance(item, (str, Path)):
        digest.update(b"file\0" + read_bounded(item, MAX_IMAGE_BYTES, DataError))
    elif isinstance(item, (np.ndarray, torch.Tensor)):
        array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else item
        array = np.ascontiguousarray(array)
        digest.update(f"array\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.view(np.uint8).data if array.size else b"")
    elif hasattr(item, "tobytes") and hasattr(item, "mode") and hasattr(item, "size"):  # a PIL image
        exif = item.getexif().get(0x0112, 1) if hasattr(item, "getexif") else 1  # orientation changes the pixels
        digest.update(f"pil\0{item.mode}\0{item.size}\0{exif}\0".encode())
        digest.update(item.tobytes())
    else:
        raise DataError(f"{what}: expected a file path, a PIL image or an array, got {type(item).__name__}")
    return digest.hexdigest()


class FeatureCache:
    """Feature vectors by key: in memory up to ``max_bytes`` (least recently used dropped first),
    and in ``folder`` when one is given (see the module docstring)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, folder: str | Path | None = None):
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ConfigError(f"a feature cache's max_bytes must be a non-negative integer, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.folder = Path(folder).expanduser() if folder is not None else None
        if self.folder is not None and self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"the feature cache {self.folder} is a file, not a folder; point FEWSHOT_CACHE at a "
                              f"folder")
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    @classmethod
    def from_env(cls, max_bytes: int = DEFAULT_MAX_BYTES) -> "FeatureCache":
        """A cache in memory and, when ``$FEWSHOT_CACHE`` is set, in its ``features`` folder."""
        root = os.environ.get("FEWSHOT_CACHE")
        if root and Path(root).expanduser().exists() and not Path(root).expanduser().is_dir():
            raise ConfigError(f"FEWSHOT_CACHE={root} is a file, not a folder; point it at a folder")
        return cls(max_bytes, Path(root) / "features" if root else None)

    def __len__(self) -> int:
        return len(self._memory)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str, dim: int | None = None) -> torch.Tensor | None:
        """The features stored under ``key`` (of width ``dim`` when given), or None."""
        found = self._memory.get(key)
        if found is not None and (dim is None or found.numel() == dim):
            self._memory.move_to_end(key)
            self.hits += 1
            return found
        if self.folder is not None and self._path(key).is_file():
            try:
                tensors = load_tensors(self._path(key))
            except CheckpointError:
                tensors = {}
            value = tensors.get("features")
            if (set(tensors) == {"features"} and value.dtype == torch.float32 and value.ndim == 1
                    and (dim is None or value.numel() == dim) and bool(torch.isfinite(value).all())):
                self._remember(key, value)
                self.hits += 1
                return value
        self.misses += 1
        return None

    def put(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().to("cpu", torch.float32).contiguous().reshape(-1).clone()
        self._remember(key, value)
        if self.folder is not None:
            save_tensors(self._path(key), {"features": value})

    def _remember(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        old = self._memory.pop(key, None)
        if old is not None:
            self._bytes -= old.numel() * old.element_size()
        self._memory[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, dropped = self._memory.popitem(last=False)
            self._bytes -= dropped.numel() * dropped.element_size()


def _prepare(preprocessing: Any, items: Sequence[Any]) -> torch.Tensor:
    """Items as the model's input tensor: a Hugging Face model's own recipe, or fewshot's Preprocessing."""
    if hasattr(preprocessing, "prepare"):
        return preprocessing.prepare(items)
    from .images import to_tensor

    return to_tensor(list(items), preprocessing)


def _device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _precision(device: torch.device) -> str:
    """The precision the backbone computes in: float32, or the dtype of an enclosing autocast
    (``--precision bf16``), whose features are another cache entry."""
    try:
        if torch.is_autocast_enabled(device.type):
            return str(torch.get_autocast_dtype(device.type))
    except (TypeError, AttributeError, RuntimeError):  # older torch: one autocast flag per device kind
        if device.type == "cpu" and torch.is_autocast_cpu_enabled():
            return str(torch.get_autocast_cpu_dtype())
    return "float32"


def embed(backbone: nn.Module, images: Sequence[Any], preprocessing: Any, *, cache: FeatureCache | None = None,
          batch_size: int = 64, progress: bool | Callable[[int, int], None] = False,
          model_fingerprint: str | None = None) -> torch.Tensor:
    """Features ``(n, d)`` (float32, on the CPU) of ``images`` (paths, PIL images or arrays).

    ``preprocessing`` turns images into the backbone's input: a
    :class:`~fewshot.models.hub_config.HubPreprocessing` or a
    :class:`~fewshot.images.Preprocessing` (anything with ``to_dict()``, and ``prepare(items)``
    or accepted by :func:`~fewshot.images.to_tensor`). Images whose features ``cache``
    holds are not run again (each distinct image once per call, even without a cache).
    The backbone runs in batches of ``batch_size`` under ``torch.inference_mode`` on its
    own device, in eval mode (restored after), in the precision of an enclosing
    ``torch.autocast`` (part of the key). The backbone's identity is
    :func:`fingerprint` (recomputed only when a weight changed), or ``model_fingerprint``
    when given. ``progress``: True prints a line per batch to stderr, or a
    callable ``progress(done, total)``.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    images = list(images)
    if not images:
        raise DataError("embed: no images given")
    settings = json.dumps(preprocessing.to_dict(), sort_keys=True, default=str)
    device = _device(backbone)
    identity = f"{model_fingerprint or fingerprint(backbone)}\0{settings}\0{_precision(device)}"
    context = hashlib.sha256(identity.encode()).hexdigest()
    keys = [hashlib.sha256(f"{context}\0{image_key(item, f'images[{i}]')}".encode()).hexdigest()
            for i, item in enumerate(images)]
    cache = cache if cache is not None else FeatureCache(max_bytes=0)
    found: dict[str, torch.Tensor] = {}
    todo: dict[str, int] = {}  # key -> index of its first image
    for i, key in enumerate(keys):
        if key in found or key in todo:
            continue
        value = cache.get(key)
        if value is None:
            todo[key] = i
        else:
            found[key] = value
    pending = list(todo.items())
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(pending), batch_size):
                chunk = pending[start:start + batch_size]
                x = _prepare(preprocessing, [images[i] for _, i in chunk]).to(device)
                out = backbone(x)
                if out.ndim != 2 or out.shape[0] != len(chunk):
                    raise ConfigError(f"the backbone gave features of shape {tuple(out.shape)} for {len(chunk)} "
                                      f"images; embed needs one vector per image (n, d)")
                out = out.float().cpu()
                for (key, _), row in zip(chunk, out):
                    found[key] = row.clone()
                    cache.put(key, row)
                if progress is True:
                    print(f"\rembedding: {min(start + batch_size, len(pending))}/{len(pending)} images",
                          end="", file=sys.stderr, flush=True)
                elif callable(progress):
                    progress(min(start + batch_size, len(pending)), len(pending))
    finally:
        backbone.train(was_training)
        if progress is True and pending:
            print(file=sys.stderr)
    widths = {found[k].numel() for k in keys}
    if len(widths) != 1:
        raise CheckpointError(f"the feature cache holds vectors of widths {sorted(widths)} for one backbone; "
                              f"clear {cache.folder or 'the cache'}")
    return torch.stack([found[k] for k in keys])


__all__ = ["DEFAULT_MAX_BYTES", "FeatureCache", "embed", "fingerprint", "image_key"]
