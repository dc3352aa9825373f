"""Prototypical Networks (Snell, Swersky and Zemel, NeurIPS 2017).

Each class is represented by the mean embedding of its support examples, its
prototype; a query is classified by a softmax over negative distances to the
prototypes. Meta-training minimises the query cross-entropy over episodes, which may
use more ways than testing (e.g. 60-way training for 5-way tests, as in the paper).

``normalize=True`` adds the feature normalisation of SimpleShot (Wang, Chao, Weinberger
and van der Maaten, 2019, "CL2N"): every feature is centred by subtracting the mean of
the episode's support features (the mean of its class means; SimpleShot subtracts the
base-class mean, which a meta-learner does not keep) and then L2-normalised;
prototypes are the means of the normalised support features. The logits are scaled by
a learned temperature (Oreshkin et al., 2018, TADAM's metric scaling): ``-α ||q - p||²``
from α = 10 with the Euclidean distance, ``α cos(q, p)`` with the cosine one.

``test_views=V`` (test-time augmentation; 1, the default, is the plain method) embeds
every support and query image at test time as V fixed, slightly shifted copies
(:func:`fewshot.data.augment.shifted_views`: the image itself, then shifts right,
left, down, up, ...) and averages the V embeddings, so prototypes and queries are
less sensitive to where a character sits in its frame. The views are the same for
every image and every episode (nothing random), and training is unchanged. It can be
set at test time too (``fewshot evaluate RUN -o test_views=5``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import MAX_VIEWS, augmentable, shifted_views
from ..data.episodes import Episode
from ..errors import ConfigError
from ..params import Boolean, Integer, OneOf, validate
from .base import Method, Predictor, class_means, register

DISTANCES = ("euclidean", "cosine")
OPTIONS = {"distance": OneOf(*DISTANCES), "normalize": Boolean(), "test_views": Integer(low=1, high=MAX_VIEWS)}


REDUCED = (torch.bfloat16, torch.float16)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is in a reduced float type (autocast's bf16 / fp16), else itself."""
    return t.float() if t.dtype in REDUCED else t


def prototype_logits(query: torch.Tensor, prototypes: torch.Tensor, distance: str, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Logits of ``query`` features against ``prototypes``: negative squared Euclidean
    distance, or cosine similarity times ``scale``.

    Always computed in (at least) float32, autocast or not: the expansion below subtracts
    numbers of the size of ||q||² to get one of the size of ||q - p||², and in bf16 (8 bits
    of mantissa) features of large norm that lie close together get distances that are
    rounding noise (a ProtoNet lost 5 points under ``--precision bf16``, issue 34). The
    matrix is queries × ways, so float32 costs nothing that matters.
    """
    device = query.device.type
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)  # not on `meta`
    if autocast or query.dtype in REDUCED or prototypes.dtype in REDUCED:
        with torch.autocast(device, enabled=False):
            scale = at_least_float32(scale) if torch.is_tensor(scale) else scale
            return prototype_logits(at_least_float32(query), at_least_float32(prototypes), distance, scale)
    if distance == "euclidean":
        # ||q||² - 2 q·p + ||p||², as one matmul rather than an (n, way, d) difference tensor.
        sq = query.pow(2).sum(1, keepdim=True) - 2 * query @ prototypes.T + prototypes.pow(2).sum(1)[None]
        return -sq
    return scale * F.normalize(query, dim=1) @ F.normalize(prototypes, dim=1).T


def centre_and_normalize(support: torch.Tensor, support_y: torch.Tensor, way: int,
                         query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SimpleShot's CL2N with the episode's support mean: centre, then L2-normalise."""
    centre = class_means(support, support_y, way).mean(0, keepdim=True)
    return F.normalize(support - centre, dim=1), F.normalize(query - centre, dim=1)


@register
class ProtoNet(Method):
    """Prototypical Networks. ``distance`` is ``"euclidean"`` (squared, the paper's
    choice) or ``"cosine"`` with a learned temperature (initialised at 10).
    ``normalize=True`` centres and L2-normalises the features (SimpleShot's CL2N) and
    learns a temperature for either distance (see the module docstring).
    ``test_views`` > 1 averages the embeddings of that many shifted views of each image
    at test time (the module docstring)."""

    name = "protonet"
    _parameter_constraints = OPTIONS

    def __init__(self, backbone: nn.Module, distance: str = "euclidean", normalize: bool = False,
                 test_views: int = 1):
        super().__init__(backbone)
        self.distance, self.normalize, self.test_views = distance, normalize, int(test_views)
        self.scale = nn.Parameter(torch.tensor(10.0)) if distance == "cosine" or normalize else None

    def set_test_options(self, test_views: int | None = None, **options) -> None:
        """Test-time ``test_views`` (see the module docstring)."""
        if options:
            raise ConfigError(f"{self.name} takes no test-time option {', '.join(sorted(options))}; "
                              "it takes test_views")
        if test_views is not None:
            validate(self.name, {"test_views": test_views}, OPTIONS)
            self.test_views = int(test_views)

    def _embed(self, x: torch.Tensor, views: int) -> torch.Tensor:
        """Test-time embeddings: of ``x`` itself, or the mean over its ``views`` shifted views."""
        if views == 1:
            return at_least_float32(self.backbone(x))
        if not augmentable(tuple(x.shape[1:])):
            raise ConfigError(f"test_views shifts images of at least 8x8 pixels; these inputs are "
                              f"{tuple(x.shape[1:])}: use test_views=1")
        features = self.backbone(shifted_views(x, views))  # one forward pass over every view
        return at_least_float32(features).reshape(views, len(x), -1).mean(0)

    def _classify(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, way: int) -> torch.Tensor:
        if not self.normalize:
            return prototype_logits(query, class_means(support, support_y, way), self.distance,
                                    self.scale if self.scale is not None else 1.0)
        support, query = centre_and_normalize(support, support_y, way, query)
        prototypes = class_means(support, support_y, way)
        if self.distance == "euclidean":
            return self.scale * prototype_logits(query, prototypes, "euclidean")
        return prototype_logits(query, prototypes, "cosine", self.scale)

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        # One forward pass over support and query together, as in the paper's code.
        n = len(episode.support_x)
        features = at_least_float32(self.backbone(torch.cat([episode.support_x, episode.query_x])))
        return self._classify(features[:n], episode.support_y, features[n:], episode.way)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        views = self.test_views  # fixed now: support and queries are embedded alike
        support = self._embed(support_x, views)
        if self.normalize:
            return lambda query_x: self._classify(support, support_y, self._embed(query_x, views), way)
        prototypes = class_means(support, support_y, way)
        scale = self.scale if self.scale is not None else 1.0
        return lambda query_x: prototype_logits(self._embed(query_x, views), prototypes, self.distance, scale)
