"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr and Hospedales, CVPR 2018).

arXiv:1711.06025. An embedding module ``f`` and a learned relation module ``g`` score
every (query, class) pair: ``r_{i,j} = g(C(f(x_i), f(x_j)))`` with ``C`` the
concatenation along the channel dimension (eq. 1 of the paper), a relation score in
[0, 1] (the module ends in a sigmoid, :meth:`RelationNet.relation_scores`).

K-shot class features: the paper *sums* the embedding feature maps of each class's
support examples (section 3.3; ``aggregate="sum"``). Here they are averaged by default
(``aggregate="mean"``), for a measured reason: a sum grows with the number of shots, so
a model trained at one shot and tested at five sees class features five times larger
than any it was trained on: one 1-shot Omniglot model scores 44.2 % 5-way 5-shot with
the sum and 98.8 % with the mean (``benchmarks/results/metric_recipes.md``). At the
training shot K the two are the same model: the sum is K times the mean, and the
relation module's first layer is linear, so its class-half weights absorb the factor.

Two relation modules:

* ``relation="conv"`` (the paper's, section 3.4): on Conv-4 feature maps, two blocks of
  3×3 convolution (64 filters), BatchNorm, ReLU and 2×2 max-pool, then a ReLU fully
  connected layer of ``hidden`` = 8 units and one output. As in the paper's embedding
  module, the last ``unpooled_blocks`` = 2 blocks of the backbone lose their max-pool,
  so 28×28 Omniglot gives 64×7×7 feature maps (the paper's own, unpadded first
  convolutions give 5×5). The backbone must end in ``nn.Flatten`` (Conv-4, ResNet-12),
  which is dropped to keep the feature maps; it is modified in place.
* ``relation="mlp"``: for flat features, a fully connected ReLU layer of ``hidden`` (64)
  units on the concatenated pair, then one output.

``loss="mse"`` (the paper's) regresses the sigmoid relation scores on the one-hot
match, ``(r_{i,j} - 1[y_i = y_j])²``, averaged over every (query, class) pair;
``loss="ce"`` applies cross-entropy to the raw scores instead. The predictor returns
the raw (pre-sigmoid) scores as logits, as every method's predictor returns logits;
the sigmoid is monotone, so the predicted class is the same.

Where this differs from the authors' code (floodsung/LearningToCompare_FSL), beside
the padding noted above: their BatchNorm stays in training mode at test time (it
normalises each test batch with its own statistics, a transductive setting); here it
uses the running statistics, as every metric method in fewshot does. Their gradient
norm is clipped at 0.5 and their linear layers start with N(0, 0.01) weights and
biases of 1; neither is in the paper, and neither is done here.

Cost: the first layer of either relation module is linear in the concatenated pair,
so it is applied to the class and query features separately and the results summed
per pair (identical output, ``way + queries`` rather than ``way × queries``
applications); the rest runs on every pair.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.episodes import Episode
from ..errors import ConfigError
from ..params import Integer, OneOf, Optional
from .base import Method, Predictor, register

RELATIONS = ("conv", "mlp")
LOSSES = ("mse", "ce")
AGGREGATES = ("sum", "mean")


def without_pooling(encoder: nn.Sequential, blocks: int, method: str = "relationnet") -> None:
    """Replace every max-pool in the last ``blocks`` pooling children of ``encoder`` by identity
    (also DN4's feature maps); ``method`` names the method in the error."""
    pooled = [child for child in encoder if any(isinstance(m, nn.MaxPool2d) for m in child.modules())]
    if blocks > len(pooled):
        raise ConfigError(f"{method} unpooled_blocks={blocks} but the backbone has {len(pooled)} pooling blocks")
    for child in pooled[len(pooled) - blocks:]:
        for parent in list(child.modules()):
            for name, module in parent.named_children():
                if isinstance(module, nn.MaxPool2d):
                    setattr(parent, name, nn.Identity())


def _pair_sum(layer: nn.Conv2d | nn.Linear, classes: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``layer`` applied to every concatenated (class, query) pair: ``(queries, way, out, ...)``.

    The first layer is linear in its input, so ``W [c; q] + b = W_c c + (W_q q + b)``: it
    runs on the ``way`` class features and the ``queries`` query features once each, not
    on all ``way × queries`` pairs, and the pairs are summed. Exactly the paper's layer on
    the concatenation, several times cheaper.
    """
    half = classes.shape[1]
    w_class, w_query = layer.weight[:, :half], layer.weight[:, half:]
    if isinstance(layer, nn.Conv2d):
        pad = layer.padding
        c = F.conv2d(classes, w_class, None, padding=pad)
        q = F.conv2d(query, w_query, layer.bias, padding=pad)
    else:
        c, q = F.linear(classes, w_class), F.linear(query, w_query, layer.bias)
    return q[:, None] + c[None]


class ConvRelation(nn.Module):
    """The paper's relation module on pairs of ``(channels, h, w)`` feature maps."""

    def __init__(self, channels: int, size: tuple[int, int], hidden: int = 8, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        h, w = size
        for i in range(2):
            layers += [nn.Conv2d(2 * channels if i == 0 else width, width, 3, padding=1), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            if min(h, w) >= 2:  # pool while there is something to pool (the paper: 5 -> 2 -> 1)
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * h * w, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, 1))

    def forward(self, classes: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Raw scores ``(queries, way)`` of class maps ``(way, C, h, w)`` and query maps ``(queries, C, h, w)``."""
        pairs = _pair_sum(self.convs[0], classes, query)
        m, way = pairs.shape[:2]
        pairs = pairs.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        return self.head(self.convs[1:](pairs)).view(m, way)


class MLPRelation(nn.Module):
    """A fully connected relation module on pairs of ``d``-dimensional features."""

    def __init__(self, d: int, hidden: int = 64):
        super().__init__()
        self.first = nn.Linear(2 * d, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, classes: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(_pair_sum(self.first, classes, query)))[..., 0]


@register
class RelationNet(Method):
    """Relation Networks. Options: ``relation`` ("conv" | "mlp"), ``loss`` ("mse" | "ce"),
    ``aggregate`` ("mean" | "sum") of K-shot support features, ``hidden`` units of the
    relation module's fully connected layer (default 8 for conv, 64 for mlp),
    ``unpooled_blocks`` (conv only). Needs ``image_shape`` to size the relation module."""

    name = "relationnet"
    # hidden: null is 8 for the conv relation module, 64 for the mlp one.
    _parameter_constraints = {"relation": OneOf(*RELATIONS), "loss": OneOf(*LOSSES), "aggregate": OneOf(*AGGREGATES),
                              "hidden": Optional(Integer(low=1)), "unpooled_blocks": Integer(low=0)}

    def __init__(self, backbone: nn.Module, image_shape: Sequence[int] | None = None, relation: str = "conv",
                 loss: str = "mse", aggregate: str = "mean", hidden: int | None = None, unpooled_blocks: int = 2):
        super().__init__(backbone)
        if image_shape is None:
            raise ConfigError("relationnet needs image_shape=(c, h, w) to size its relation module")
        self.relation_kind, self.loss_kind, self.aggregate = relation, loss, aggregate
        self.hidden = int(hidden if hidden is not None else (8 if relation == "conv" else 64))
        self.unpooled_blocks = unpooled_blocks
        if relation == "conv":
            children = list(backbone.children()) if isinstance(backbone, nn.Sequential) else []
            if not children or not isinstance(children[-1], nn.Flatten):
                raise ConfigError("relationnet relation='conv' needs a backbone ending in Flatten (conv4, resnet12); "
                                  "use relation='mlp' for flat features")
            # The backbone without its Flatten: feature maps for the convolutional relation module.
            self.backbone = nn.Sequential(*children[:-1])
            without_pooling(self.backbone, unpooled_blocks)
            channels, h, w = self._dry_run(image_shape)
            self.relation = ConvRelation(channels, (h, w), self.hidden, width=channels)
        else:
            (d,) = self._dry_run(image_shape)
            self.relation = MLPRelation(d, self.hidden)

    @torch.no_grad()
    def _dry_run(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            shape = tuple(self.backbone(torch.zeros(2, *image_shape)).shape[1:])
        finally:
            self.backbone.train(was_training)
        expected = 3 if self.relation_kind == "conv" else 1
        if len(shape) != expected:
            raise ConfigError(f"relationnet relation='{self.relation_kind}' needs {expected}-d features per image, "
                              f"the backbone gives shape {shape}")
        return shape

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.relation_kind == "conv":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def _class_features(self, support: torch.Tensor, support_y: torch.Tensor, way: int) -> torch.Tensor:
        flat = support.reshape(len(support), -1)
        sums = torch.zeros(way, flat.shape[1], dtype=flat.dtype, device=flat.device).index_add_(0, support_y, flat)
        if self.aggregate == "mean":
            sums = sums / torch.bincount(support_y, minlength=way).clamp_min(1).to(flat.dtype)[:, None]
        return sums.view(way, *support.shape[1:])

    def _scores(self, classes: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Raw relation scores ``(queries, way)`` of every (query, class) pair."""
        return self.relation(classes, query)

    def relation_scores(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int,
                        query_x: torch.Tensor) -> torch.Tensor:
        """The paper's relation scores ``r_{i,j}`` in [0, 1]: ``(queries, way)``."""
        return torch.sigmoid(self.adapt(support_x, support_y, way)(query_x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x).flatten(1)

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        features = self._encode(torch.cat([episode.support_x, episode.query_x]))
        n = len(episode.support_x)
        return self._scores(self._class_features(features[:n], episode.support_y, episode.way), features[n:])

    def episode_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "mse":  # the paper's: sigmoid scores regressed on one-hot targets
            return F.mse_loss(torch.sigmoid(logits), F.one_hot(labels, logits.shape[1]).to(logits.dtype))
        return F.cross_entropy(logits, labels)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        classes = self._class_features(self._encode(support_x), support_y, way)
        return lambda query_x: self._scores(classes, self._encode(query_x))
