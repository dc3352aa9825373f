"""Domains as data: a named style applied to every image of a dataset, seeded and deterministic.

A *domain* is a dataset, or a dataset seen through one or more styles: ``omniglot:blur``
is Omniglot with every image blurred, ``digits:invert:noise`` the digits inverted, then
made noisy. A domain name goes wherever a dataset name does (``--dataset omniglot:blur``,
a config's ``dataset``, ``fewshot evaluate RUN --domains ...``): :func:`fewshot.data.load_dataset`
loads the base dataset and restyles it here.

**Styles** (:data:`STYLES`; a user's joins with ``STYLES.register(name, Style(...))``):

* ``invert``: ``1 - x``, bright strokes become dark on bright.
* ``blur``: Gaussian blur, sigma 1 pixel per 28 of the side.
* ``noise``: additive Gaussian noise of standard deviation 0.25, clipped to [0, 1].
* ``elastic``: the elastic distortion of Simard, Steinkraus and Platt ("Best Practices for
  Convolutional Neural Networks Applied to Visual Document Analysis", ICDAR 2003; no arXiv
  version): a random displacement field smoothed by a Gaussian of sigma 4 pixels and scaled
  to alpha 34 pixels (both at 28x28, scaled with the side).
* ``thicken``: strokes dilated by a 3x3 maximum (1 pixel per 28 of the side); an image whose
  mean is above 0.5 has dark ink, so its minimum is taken instead.
* ``low-contrast``: values squeezed to 30 % of their range about 0.5.
* ``colour-jitter`` (RGB only): per image, brightness, contrast and saturation each scaled by
  a factor drawn from [0.6, 1.4], and the colour channels by factors from [0.8, 1.2].

**Seeded and deterministic.** A style's random numbers come from NumPy's generator seeded
with ``(STYLE_STREAM, crc32(style name), chunk)``, chunks of :data:`CHUNK` images in dataset
order: image ``i`` gets the same change on every machine and in every process, whatever else
was loaded before.

**Applied once, cached.** The restyled images are computed once per (base dataset, options,
data root, styles) and kept in memory (:data:`CACHE_SIZE` domains, least recently used
first out): loading ``omniglot:blur`` again in the same process costs nothing. They are not
written to disk: each style is a few array operations over the whole dataset (seconds for
Omniglot's 130,000 images at 28x28).
"""

from __future__ import annotations

import json
import math
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import Registry
from .base import ClassDataset, to_float_images
from .domains import is_multi_domain

#: Separates a dataset from its styles in a domain name: ``omniglot:blur``.
STYLE_SEPARATOR = ":"
#: First seed word of every style's generator, apart from the samplers' ``(seed, i)`` streams.
STYLE_STREAM = 0x7374796C  # "styl"
#: Images restyled per generator: bounds the memory of one step, and fixes the streams.
CHUNK = 4096
#: Restyled domains kept in memory.
CACHE_SIZE = 4
#: Styles one domain may chain (each is a pass over every image).
MAX_STYLES = 8


@dataclass(frozen=True)
class Style:
    """One named change of images: ``apply(x, rng)`` maps ``(n, c, h, w)`` floats in [0, 1]
    to the same shape, in [0, 1], with random numbers from ``rng`` only."""

    summary: str
    apply: Callable[[torch.Tensor, np.random.Generator], torch.Tensor]
    rgb_only: bool = False


#: Every style by name (see the module docstring).
STYLES: Registry[Style] = Registry("style", "styles: " + "invert, blur, noise, elastic, thicken, low-contrast, "
                                   "colour-jitter (RGB)")


def style(name: str, summary: str, *, rgb_only: bool = False):
    """Register the decorated function as style ``name``."""
    def add(apply):
        STYLES.register(name, Style(summary, apply, rgb_only))
        return apply
    return add


def _scale(x: torch.Tensor) -> float:
    """Pixels per 28 of the image's side: the styles are defined at Omniglot's 28x28."""
    return min(x.shape[-2:]) / 28.0


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` (``(n, c, h, w)``) blurred by a separable Gaussian of ``sigma`` pixels, edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    n, c, h, w = x.shape
    flat = x.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


@style("invert", "1 - x: bright strokes on dark become dark on bright")
def _invert(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return 1.0 - x


@style("blur", "Gaussian blur, sigma 1 pixel per 28 of the side")
def _blur(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return gaussian_blur(x, _scale(x))


@style("noise", "additive Gaussian noise, standard deviation 0.25, clipped")
def _noise(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return x + 0.25 * torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32))


@style("elastic", "elastic distortion (Simard et al. 2003: sigma 4, alpha 34 pixels at 28x28)")
def _elastic(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    field = torch.from_numpy(rng.uniform(-1.0, 1.0, (n, 2, h, w)).astype(np.float32))
    scale = _scale(x)
    # Smoothed field, in pixels (alpha), then in grid_sample's normalised units (2 = the side).
    field = gaussian_blur(field, 4.0 * scale) * (34.0 * scale)
    dy, dx = field[:, 0] * (2.0 / h), field[:, 1] * (2.0 / w)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx + dx, gy + dy], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@style("thicken", "strokes dilated by 1 pixel per 28 of the side (the ink: bright, or dark on a bright image)")
def _thicken(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    k = 2 * max(1, round(_scale(x))) + 1
    grown = F.max_pool2d(x, k, stride=1, padding=k // 2)
    shrunk = -F.max_pool2d(-x, k, stride=1, padding=k // 2)
    dark_ink = (x.mean(dim=(1, 2, 3)) > 0.5).view(-1, 1, 1, 1)
    return torch.where(dark_ink, shrunk, grown)


@style("low-contrast", "values squeezed to 30 % of their range about 0.5")
def _low_contrast(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return 0.5 + 0.3 * (x - 0.5)


@style("colour-jitter", "per image: brightness, contrast and saturation x [0.6, 1.4], channels x [0.8, 1.2]",
       rgb_only=True)
def _colour_jitter(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    n = len(x)
    draw = lambda lo, hi, *shape: torch.from_numpy(rng.uniform(lo, hi, (n, *shape)).astype(np.float32))  # noqa: E731
    brightness, contrast, saturation = (draw(0.6, 1.4, 1, 1, 1) for _ in range(3))
    x = x * brightness
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = grey.mean(dim=(2, 3), keepdim=True) + contrast * (x - grey.mean(dim=(2, 3), keepdim=True))
    x = grey + saturation * (x - grey)
    return x * draw(0.8, 1.2, 3, 1, 1)


def split_domain(name: str) -> tuple[str, tuple[str, ...]]:
    """``"omniglot:blur:noise"`` as ``("omniglot", ("blur", "noise"))``; each style checked."""
    base, *styles = name.split(STYLE_SEPARATOR)
    if len(styles) > MAX_STYLES:
        raise ConfigError(f"domain '{name[:80]}' chains {len(styles)} styles; at most {MAX_STYLES}")
    for s in styles:
        STYLES[s]  # an unknown style: one line with the closest name
    if not base or not styles:
        raise ConfigError(f"domain '{name}' must look like DATASET:STYLE (e.g. omniglot:blur)")
    return base, tuple(styles)


def with_style(dataset: str | None, style: str | None) -> str | None:
    """The domain of ``--dataset DATASET --style STYLE``: ``DATASET:STYLE`` (``style`` may chain,
    ``invert:noise``); ``dataset`` itself when ``style`` is None, or when ``dataset`` already
    names exactly these styles. An unknown style, a missing dataset, several domains, or a
    ``dataset`` whose own styles differ from ``style`` is one line (ConfigError)."""
    if style is None:
        return dataset
    if not dataset:
        raise ConfigError(f"--style {style} restyles a dataset: name it with --dataset (e.g. --dataset omniglot)")
    if is_multi_domain(dataset):
        raise ConfigError(f"--style applies to one dataset, and '{dataset}' names several domains: write each "
                          f"domain's style into the name (e.g. omniglot{STYLE_SEPARATOR}{style},digits) and "
                          "drop --style")
    _, chain = split_domain(f"{dataset.split(STYLE_SEPARATOR)[0]}{STYLE_SEPARATOR}{style}")  # checks each style
    if STYLE_SEPARATOR not in dataset:
        return f"{dataset}{STYLE_SEPARATOR}{style}"
    base, own = split_domain(dataset)
    if own != chain:
        raise ConfigError(f"--dataset {dataset} and --style {style} disagree: give the style once, either "
                          f"--dataset {base}{STYLE_SEPARATOR}{style} or --dataset {base} --style {style}")
    return dataset


def restyle(images: torch.Tensor, styles: tuple[str, ...]) -> torch.Tensor:
    """``images`` (uint8 or float ``(n, c, h, w)``) with ``styles`` applied in order, in the
    images' dtype (uint8 rounded); deterministic (see the module docstring)."""
    for name in styles:
        if STYLES[name].rgb_only and images.shape[1] != 3:
            raise ConfigError(f"style '{name}' changes colours; these images have {images.shape[1]} channel(s): "
                              "use it on an RGB dataset")
    out = torch.empty_like(images)
    with torch.no_grad():
        for chunk, start in enumerate(range(0, len(images), CHUNK)):
            x = to_float_images(images[start:start + CHUNK].clone() if images.dtype != torch.uint8
                                else images[start:start + CHUNK])
            for name in styles:
                rng = np.random.default_rng((STYLE_STREAM, zlib.crc32(name.encode()), chunk))
                x = STYLES[name].apply(x, rng).clamp_(0.0, 1.0)
            out[start:start + CHUNK] = x.mul(255.0).round_().to(torch.uint8) if images.dtype == torch.uint8 else x
    return out


_cache: OrderedDict[str, ClassDataset] = OrderedDict()


def styled(name: str, styles: tuple[str, ...], key: dict, load: Callable[[], ClassDataset]) -> ClassDataset:
    """The base dataset (``load()``) with ``styles`` applied to its images, named ``name``:
    computed once for ``key`` (what identifies the base: its name, options and data root) and
    kept (see the module docstring); a second call for the same key loads nothing."""
    cache_key = json.dumps([key, list(styles)], sort_keys=True, default=str)
    if cache_key in _cache:
        _cache.move_to_end(cache_key)
        return _cache[cache_key]
    base = load()
    dataset = ClassDataset(name, restyle(base.images, styles), base.labels, base.class_names, dict(base.splits),
                           {**base.info, "styles": list(styles)}, class_groups=base.class_groups)
    _cache[cache_key] = dataset
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return dataset


__all__ = ["CACHE_SIZE", "CHUNK", "MAX_STYLES", "STYLES", "STYLE_SEPARATOR", "STYLE_STREAM", "Style", "gaussian_blur", "restyle",
           "split_domain", "style", "styled", "with_style"]
