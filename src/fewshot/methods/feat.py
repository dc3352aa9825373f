"""FEAT: few-shot embedding adaptation with a set-to-set function (Ye, Hu, Zhan and Sha,
CVPR 2020, "Few-Shot Learning via Embedding Adaptation with Set-to-Set Functions",
arXiv:1812.03664).

Per episode the class prototypes (means of the support features) are adapted jointly,
as a set, by a Transformer layer: one-head scaled dot-product self-attention over the
prototypes, dropout on its projected output, a residual connection and layer norm (the
paper's best set function, Sec. 4; its code's post-norm layer: ``LN(x + Drop(W_o Att(x)))``).
The adaptation is permutation-equivariant: relabelling the classes permutes the logits.
Queries are not adapted; their logits are ``-||q - p̂_k||² / temperature``.

Training adds the paper's contrastive regulariser (Sec. 4, "FEAT with contrastive
learning"): each class's support *and* query instances together are passed through the
same set function, their means are that class's centres, and every instance of the
episode is classified against these centres by ``-||x - c_k||² / temperature2``; the
cross-entropy is added to the query loss with weight ``balance``.

Defaults are the authors' Conv-4 1-shot settings (their repository's README):
``temperature`` 64, ``temperature2`` 16, ``balance`` 1, output dropout 0.5 (attention
dropout 0.1, as in their layer). They also train the set function with a 10x larger
learning rate than a pre-trained backbone; here one learning rate trains both.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.episodes import Episode
from ..errors import ConfigError
from ..metrics import accuracy
from ..models.backbones import feature_dim
from ..params import Real
from .base import Method, Predictor, class_means, register
from .protonet import prototype_logits

ATTENTION_DROPOUT = 0.1  # the authors' layer's dropout on the attention weights


class SetAttention(nn.Module):
    """One-head self-attention over a set of ``d``-vectors, ``(..., s, d) -> (..., s, d)``,
    with dropout, residual and layer norm (FEAT's set-to-set function; the initialisation
    is the authors': normal projections of std ``sqrt(1/d)``, Xavier-normal output)."""

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(d, d, bias=False) for _ in range(3))
        for projection in (self.query, self.key, self.value):
            nn.init.normal_(projection.weight, 0.0, math.sqrt(2.0 / (d + d)))
        self.out = nn.Linear(d, d)
        nn.init.xavier_normal_(self.out.weight)
        self.norm = nn.LayerNorm(d)
        self.dropout, self.attention_dropout = nn.Dropout(dropout), nn.Dropout(ATTENTION_DROPOUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.query(x) @ self.key(x).transpose(-1, -2) / math.sqrt(x.shape[-1])
        weights = self.attention_dropout(scores.softmax(-1))
        return self.norm(x + self.dropout(self.out(weights @ self.value(x))))


@register
class FEAT(Method):
    """FEAT (see the module docstring). ``temperature`` divides the query logits'
    squared distances (64), ``temperature2`` the regulariser's (16); ``balance`` weighs
    the regulariser (1; 0 turns it off); ``dropout`` on the attention output (0.5).
    Needs ``image_shape`` to size the set function to the backbone's features."""

    name = "feat"
    _parameter_constraints = {"temperature": Real(low=0, open_low=True), "temperature2": Real(low=0, open_low=True),
                              "balance": Real(low=0), "dropout": Real(low=0, high=1, open_high=True)}

    def __init__(self, backbone: nn.Module, image_shape: Sequence[int] | None = None, temperature: float = 64.0,
                 temperature2: float = 16.0, balance: float = 1.0, dropout: float = 0.5):
        super().__init__(backbone)
        options = {"temperature": temperature, "temperature2": temperature2, "balance": balance, "dropout": dropout}
        if image_shape is None:
            raise ConfigError(f"{self.name} needs image_shape (channels, height, width) to size its set function")
        self._options = {k: float(v) for k, v in options.items()}
        self.temperature, self.temperature2 = self._options["temperature"], self._options["temperature2"]
        self.balance = self._options["balance"]
        self.attention = SetAttention(feature_dim(backbone, image_shape), self._options["dropout"])

    def _predictor(self, support: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        adapted = self.attention(class_means(support, support_y, way))
        return lambda query: prototype_logits(query, adapted, "euclidean") / self.temperature

    def regularizer(self, features: torch.Tensor, labels: torch.Tensor, way: int) -> torch.Tensor:
        """The contrastive loss (module docstring) of an episode's ``features`` (support and
        query) with their ``labels``: each class's instances adapted as a set, their means
        the centres every instance is classified against."""
        centres = torch.stack([self.attention(features[labels == k]).mean(0) for k in range(way)])
        return F.cross_entropy(prototype_logits(features, centres, "euclidean") / self.temperature2, labels)

    def loss(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, dict[str, float]]:
        losses, accs = [], []
        for ep in episodes:
            n = len(ep.support_x)
            features = self.features(torch.cat([ep.support_x, ep.query_x]))
            logits = self._predictor(features[:n], ep.support_y, ep.way)(features[n:])
            loss = F.cross_entropy(logits, ep.query_y)
            if self.training and self.balance > 0:  # the regulariser is a training objective only, as in the paper
                loss = loss + self.balance * self.regularizer(features, torch.cat([ep.support_y, ep.query_y]), ep.way)
            losses.append(loss)
            accs.append(accuracy(logits, ep.query_y))
        return torch.stack(losses).mean(), {"accuracy": sum(accs) / len(accs)}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        predictor = self._predictor(self.features(support_x), support_y, way)
        return lambda query_x: predictor(self.features(query_x))
