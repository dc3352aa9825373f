"""DN4, the Deep Nearest Neighbor Neural Network (Li, Wang, Xu, Huo, Gao and Luo, CVPR
2019, "Revisiting Local Descriptor based Image-to-Class Measure for Few-shot Learning",
arXiv:1903.12290).

An image is not one feature vector but the ``h × w`` local descriptors of its last
feature map (``C``-dimensional each). A class is the pool of the local descriptors of all
its support images (section 3.2: no pooling into an image-level feature, no prototype).
The image-to-class measure of a query ``q`` with descriptors ``x_1 .. x_L`` and a class
``c`` (eq. 2 of the paper) is

    Φ(q, c) = Σ_{i=1..L} Σ_{j=1..k} cos(x_i, x̂_i^j)

where ``x̂_i^1 .. x̂_i^k`` are the ``k`` descriptors of class ``c``'s pool most similar
(cosine) to ``x_i``. The logits are ``Φ(q, c)`` themselves, trained by cross-entropy over
the classes (as the authors' training does); ``neighbors`` = k = 3, the paper's choice.
At K shots a class's pool holds ``K × h × w`` descriptors, so more shots give more
candidates, not an average.

The embedding is the backbone without its final ``Flatten`` and without the max-pool of
its last ``unpooled_blocks`` = 2 blocks, as the paper's Conv-64F (max-pool in the first
two of four blocks only): 28×28 Omniglot gives 7×7 = 49 descriptors, 84×84 gives 21×21.
The backbone must end in ``nn.Flatten`` (Conv-4, ResNet-12); it is modified in place.
The paper's Conv-64F uses LeakyReLU; Conv-4 here keeps its ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.episodes import Episode
from ..errors import ConfigError, DataError
from ..params import Integer
from .base import Method, Predictor, register
from .relation import without_pooling

OPTIONS = {"neighbors": Integer(low=1, high=10_000), "unpooled_blocks": Integer(low=0, high=16)}


def image_to_class(query: torch.Tensor, support: torch.Tensor, support_y: torch.Tensor, way: int,
                   neighbors: int) -> torch.Tensor:
    """The paper's ``Φ(q, c)`` (eq. 2) for query descriptors ``(m, L, d)`` and support
    descriptors ``(n, L', d)`` labelled ``support_y`` in ``0 .. way-1``: ``(m, way)``.

    A class whose pool holds fewer than ``neighbors`` descriptors uses all of them.
    """
    q = F.normalize(query, dim=-1)
    s = F.normalize(support, dim=-1)
    scores = []
    for c in range(way):
        pool = s[support_y == c].flatten(0, 1)  # every descriptor of every support image of class c
        if len(pool) == 0:
            raise DataError(f"dn4: class {c} of {way} has no support image; give every class at least one")
        cosines = q @ pool.T  # (m, L, pool)
        scores.append(cosines.topk(min(neighbors, len(pool)), dim=-1).values.sum((1, 2)))
    return torch.stack(scores, 1)


@register
class DN4(Method):
    """DN4 (see the module docstring). ``neighbors``: k, the nearest descriptors of a class
    summed per query descriptor (3); ``unpooled_blocks``: how many of the backbone's last
    pooling blocks lose their max-pool (2)."""

    name = "dn4"
    _parameter_constraints = OPTIONS

    def __init__(self, backbone: nn.Module, neighbors: int = 3, unpooled_blocks: int = 2):
        super().__init__(backbone)
        self.neighbors, self.unpooled_blocks = neighbors, unpooled_blocks
        children = list(backbone.children()) if isinstance(backbone, nn.Sequential) else []
        if not children or not isinstance(children[-1], nn.Flatten):
            raise ConfigError("dn4 needs a backbone ending in Flatten (conv4, resnet12): its local descriptors are "
                              "the feature map before it")
        self.backbone = nn.Sequential(*children[:-1])
        without_pooling(self.backbone, unpooled_blocks, "dn4")

    def descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """The local descriptors of images ``x``: ``(n, h*w, C)``."""
        maps = self.backbone(x.contiguous(memory_format=torch.channels_last))
        if maps.dim() != 4:
            raise ConfigError(f"dn4 needs feature maps (n, C, h, w) from the backbone, got shape {tuple(maps.shape)}")
        return maps.flatten(2).transpose(1, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.descriptors(x).flatten(1)

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        n = len(episode.support_x)
        desc = self.descriptors(torch.cat([episode.support_x, episode.query_x]))
        return image_to_class(desc[n:], desc[:n], episode.support_y, episode.way, self.neighbors)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        support = self.descriptors(support_x)
        return lambda query_x: image_to_class(self.descriptors(query_x), support, support_y, way, self.neighbors)
