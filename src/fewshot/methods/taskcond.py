"""Task-conditioned network: a task encoder FiLM-conditions the feature extractor.

After TADAM (Oreshkin, Rodríguez and Lacoste, NeurIPS 2018) and CNAPs (Requeima,
Gordon, Bronskill, Nowozin and Turner, NeurIPS 2019), with FiLM layers from Perez et
al. (AAAI 2018):

1. The task encoder embeds the support set. A task-encoder copy of the backbone (its
   own weights, as CNAPs' separate set encoder; it also keeps the conditioned
   backbone's BatchNorm statistics clean) gives support features; each class ``c``
   is summarised by its mean ``μ_c`` and per-feature spread ``σ_c`` (standard
   deviation over its shots; zero in 1-shot), mapped by an MLP ``φ`` and averaged over
   classes (a DeepSets encoder), then mapped by ``ρ``: ``z = ρ(mean_c φ([μ_c, σ_c]))``.
   ``z`` depends neither on the order of the support set nor on its labels.
2. Linear heads map ``z`` to FiLM parameters ``γ = 1 + Δγ`` and ``β`` per channel
   (initialised to the identity, Δγ = β = 0). ``condition="backbone"`` (default)
   modulates the output of every BatchNorm layer of the backbone (or, without
   BatchNorm, every Linear layer), ``γ ⊙ h + β``, before its non-linearity, as TADAM's
   task-embedding network does; ``condition="features"`` modulates only the final
   features (a conditioned classifier input; works with any backbone).
3. The classifier is a prototype classifier on the conditioned features (Snell et al.,
   2017) with TADAM's learned metric scale ``α``: ``-α ||q - p_c||²`` (``distance="euclidean"``,
   α from 1) or ``α cos(q, p_c)`` (``distance="cosine"``, α from 10).

Meta-training is episodic: the query cross-entropy, back-propagated through the
classifier, the FiLM heads and the task encoder.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from ..data.episodes import Episode
from ..errors import ConfigError
from ..params import Integer, OneOf
from ..models.backbones import feature_dim
from .base import Method, Predictor, class_means, register
from .protonet import DISTANCES, prototype_logits

CONDITIONS = ("backbone", "features")


class _FiLMHook:
    """Forward hook applying the method's current FiLM parameters of layer ``index``."""

    def __init__(self, owner: "TaskCondNet", index: int):
        self.owner, self.index = owner, index

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        film = self.owner._film
        if film is None:
            return None
        gamma, beta = film[self.index]
        shape = (1, -1) + (1,) * (output.ndim - 2)
        return output * gamma.view(shape) + beta.view(shape)


class TaskEncoder(nn.Module):
    """``z = ρ(mean_c φ([μ_c, σ_c]))`` over the classes of a support set's features."""

    def __init__(self, d: int, hidden: int = 64):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(2 * d, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                 nn.ReLU(inplace=True))
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True))

    def forward(self, features: torch.Tensor, labels: torch.Tensor, way: int) -> torch.Tensor:
        means = class_means(features, labels, way)
        spread = class_means((features - means[labels]).pow(2), labels, way).add(1e-8).sqrt()
        return self.rho(self.phi(torch.cat([means, spread], dim=1)).mean(0))


@register
class TaskCondNet(Method):
    """Task-conditioned network (TADAM / CNAPs-style FiLM). Options: ``condition``
    ("backbone" | "features"), ``distance`` ("euclidean" | "cosine"), ``hidden`` width of
    the task encoder. Needs ``image_shape`` to size the task encoder."""

    name = "taskcond"
    _parameter_constraints = {"condition": OneOf(*CONDITIONS), "distance": OneOf(*DISTANCES), "hidden": Integer(low=1)}

    def __init__(self, backbone: nn.Module, image_shape: Sequence[int] | None = None, condition: str = "backbone",
                 distance: str = "euclidean", hidden: int = 64):
        super().__init__(backbone)
        if image_shape is None:
            raise ConfigError("taskcond needs image_shape=(c, h, w) to size its task encoder")
        self.condition, self.distance, self.hidden = condition, distance, hidden
        d = feature_dim(backbone, image_shape)
        self.task_backbone = copy.deepcopy(backbone)
        self.task_encoder = TaskEncoder(d, hidden)
        if condition == "backbone":
            targets = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            targets = targets or [m for m in backbone.modules() if isinstance(m, nn.Linear)]
            if not targets:
                raise ConfigError("taskcond condition='backbone' needs a backbone with BatchNorm or Linear layers; "
                                  "use condition='features'")
            widths = [m.num_features if isinstance(m, nn.modules.batchnorm._BatchNorm) else m.out_features
                      for m in targets]
            for index, module in enumerate(targets):
                module.register_forward_hook(_FiLMHook(self, index))
        else:
            widths = [d]
        self.film_heads = nn.ModuleList(nn.Linear(hidden, 2 * w) for w in widths)
        for head in self.film_heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.scale = nn.Parameter(torch.tensor(10.0 if distance == "cosine" else 1.0))
        self._film: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def task_embedding(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> torch.Tensor:
        """The task encoder's embedding ``z`` (hidden,) of a support set."""
        return self.task_encoder(self.task_backbone(support_x), support_y, way)

    def film_parameters(self, z: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(γ, β) of each conditioned layer for task embedding ``z``."""
        out = []
        for head in self.film_heads:
            delta_gamma, beta = head(z).chunk(2)
            out.append((1 + delta_gamma, beta))
        return out

    @contextmanager
    def _conditioned(self, film: list[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
        self._film = film
        try:
            yield
        finally:
            self._film = None

    def conditioned_features(self, x: torch.Tensor, film: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Features of ``x`` conditioned on a task's FiLM parameters."""
        if self.condition == "features":
            gamma, beta = film[0]
            return self.backbone(x) * gamma + beta
        with self._conditioned(film):
            return self.backbone(x)

    def _logits(self, query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        if self.distance == "euclidean":
            return self.scale * prototype_logits(query, prototypes, "euclidean")
        return prototype_logits(query, prototypes, "cosine", self.scale)

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        film = self.film_parameters(self.task_embedding(episode.support_x, episode.support_y, episode.way))
        features = self.conditioned_features(torch.cat([episode.support_x, episode.query_x]), film)
        n = len(episode.support_x)
        return self._logits(features[n:], class_means(features[:n], episode.support_y, episode.way))

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        film = self.film_parameters(self.task_embedding(support_x, support_y, way))
        prototypes = class_means(self.conditioned_features(support_x, film), support_y, way)
        return lambda query_x: self._logits(self.conditioned_features(query_x, film), prototypes)
