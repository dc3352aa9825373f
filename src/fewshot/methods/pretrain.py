"""Pre-training on the meta-train classes: Baseline and Baseline++ (Chen et al., ICLR 2019).

"A Closer Look at Few-shot Classification": a backbone and a classifier over *all*
training classes are trained with plain cross-entropy; at test time the backbone is
frozen and a new classifier is trained on each task's support set. Baseline uses a
linear classifier, Baseline++ a cosine one (:class:`~fewshot.models.heads.CosineHead`),
which reduces intra-class variation.

Both train in the one episodic trainer (:mod:`fewshot.train`): an episode is a
class-balanced minibatch. Its support and query images together are classified over
all training classes; an image's global label is the row of its class
(``episode.classes[local label]``) among the training split's classes, in sorted
order. ``classes`` (the class ids of the training split) fixes that order; with only
``num_classes`` the rows are assigned in order of first appearance, and the
assignment is saved with the weights (the ``class_ids`` buffer), so a resumed run or a
loaded model keeps it.

``adapt`` is the paper's protocol: features of the frozen backbone, a new ``way``-class
head (linear, or cosine with a class-wise learned norm, scale 2) trained on the support
features for 100 epochs of SGD (lr 0.01, momentum 0.9, dampening 0.9, weight decay
0.001) in batches of 4, seeded per task. Any other strategy of
:mod:`~fewshot.methods.transfer` (fine-tuning, LP-FT ...) applies to these backbones
through ``fewshot evaluate RUN --adapt STRATEGY`` / :func:`~fewshot.methods.transfer.wrap`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.episodes import Episode
from ..errors import ConfigError
from ..models.backbones import feature_dim
from ..params import Integer, Optional, Real, validate
from ..metrics import accuracy
from .base import Method, Predictor, register
from .transfer import CosineHead, new_head, train_head

ADAPT_DEFAULTS: dict[str, Any] = {"adapt_epochs": 100, "adapt_lr": 0.01, "adapt_batch": 4, "seed": 0}


@register
class Baseline(Method):
    """Supervised pre-training over all training classes with a linear head (Chen et al., 2019).

    ``num_classes`` is the number of training classes; ``classes`` (their dataset ids)
    may be given instead or as well. ``image_shape`` (channels, height, width) sizes the
    head from the backbone's feature width. Adaptation options (also at test time via
    :meth:`set_test_options`): ``adapt_epochs``, ``adapt_lr``, ``adapt_batch``, ``seed``.
    """

    name = "baseline"
    head_type = "linear"
    _parameter_constraints = {"num_classes": Optional(Integer(low=1)), "scale": Optional(Real(low=0, open_low=True)),
                              "adapt_epochs": Integer(low=0), "adapt_lr": Real(low=0, open_low=True),
                              "adapt_batch": Integer(low=1), "seed": Integer()}

    def __init__(self, backbone: nn.Module, image_shape: Sequence[int] | None = None, num_classes: int | None = None,
                 classes: Sequence[int] | None = None, scale: float | None = None,
                 adapt_epochs: int = ADAPT_DEFAULTS["adapt_epochs"], adapt_lr: float = ADAPT_DEFAULTS["adapt_lr"],
                 adapt_batch: int = ADAPT_DEFAULTS["adapt_batch"], seed: int = ADAPT_DEFAULTS["seed"]):
        super().__init__()
        if image_shape is None:
            raise ConfigError(f"{self.name} needs image_shape (channels, height, width) to size its classifier")
        if classes is not None:
            classes = sorted(int(c) for c in classes)
            if len(set(classes)) != len(classes):
                raise ConfigError(f"{self.name}: classes must be distinct class ids")
            if num_classes is not None and int(num_classes) != len(classes):
                raise ConfigError(f"{self.name}: num_classes={num_classes} but {len(classes)} classes given")
            num_classes = len(classes)
        self.backbone = backbone
        self.image_shape = tuple(int(s) for s in image_shape)
        self.feature_dim = feature_dim(backbone, self.image_shape)
        self.scale = scale
        # Sized at load time from the checkpoint when the class count is unknown here.
        self._sized = num_classes is not None
        self._build_head(num_classes or 0)
        ids = torch.tensor(classes, dtype=torch.int64) if classes is not None else torch.full((num_classes or 0,), -1)
        self.register_buffer("class_ids", ids)
        self._rows: dict[int, int] | None = None
        self._adapt = {"adapt_epochs": adapt_epochs, "adapt_lr": adapt_lr, "adapt_batch": adapt_batch, "seed": seed}

    def _build_head(self, num_classes: int) -> None:
        if self.head_type == "cosine":
            self.head = CosineHead(self.feature_dim, max(num_classes, 1), self.scale)
        else:
            self.head = nn.Linear(self.feature_dim, max(num_classes, 1))
            with torch.no_grad():
                self.head.bias.zero_()  # as Chen et al.'s code

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def set_test_options(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(ADAPT_DEFAULTS))
        if unknown:
            raise ConfigError(f"{self.name} takes no option {', '.join(unknown)}; "
                              f"its adaptation options are: {', '.join(ADAPT_DEFAULTS)}")
        validate(self.name, options, self._parameter_constraints)
        self._adapt = {**self._adapt, **options}

    # -- the class map -------------------------------------------------------------------

    def source_classes(self) -> list[int] | None:
        return [int(c) for c in self.class_ids.tolist()]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        ids = state_dict.get(prefix + "class_ids")
        if ids is not None and not self._sized and ids.shape != self.class_ids.shape:
            # Built without knowing the class count (e.g. to load a run): take the checkpoint's.
            self._build_head(len(ids))
            self.class_ids = torch.full_like(ids, -1)
            self._sized = True
        self._rows = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def global_labels(self, episode: Episode, labels: torch.Tensor) -> torch.Tensor:
        """Rows of the classifier for an episode's local ``labels``."""
        if not episode.classes or len(episode.classes) != episode.way:
            raise ConfigError(f"{self.name} trains on episodes that name their classes (Episode.classes); "
                              f"sample them with EpisodeSampler")
        if not self._sized or self.num_classes == 0:
            raise ConfigError(f"{self.name} needs the number of training classes: pass the option num_classes=N "
                              f"(N: the classes of the training split)")
        if self._rows is None:
            self._rows = {int(c): i for i, c in enumerate(self.class_ids.tolist()) if c >= 0}
        rows = []
        for c in episode.classes:
            row = self._rows.get(int(c))
            if row is None:
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    raise ConfigError(f"{self.name} in distributed training needs the training classes up front "
                                      f"(option classes=[...]): processes see different episodes, so rows "
                                      f"assigned on first sight would disagree")
                row = len(self._rows)
                if row >= self.num_classes or int(self.class_ids[row]) != -1:
                    raise ConfigError(f"{self.name} saw class {c}, beyond its {self.num_classes} training classes; "
                                      f"set num_classes to the number of classes of the training split")
                self.class_ids[row] = int(c)
                self._rows[int(c)] = row
            rows.append(row)
        return torch.tensor(rows, dtype=torch.int64, device=labels.device)[labels]

    # -- the Method interface --------------------------------------------------------------

    def loss(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, dict[str, float]]:
        xs, ys = [], []
        for ep in episodes:
            xs += [ep.support_x, ep.query_x]
            ys += [self.global_labels(ep, ep.support_y), self.global_labels(ep, ep.query_y)]
        x, y = torch.cat(xs), torch.cat(ys)
        logits = self.head(self.backbone(x))
        return F.cross_entropy(logits, y), {"accuracy": accuracy(logits, y)}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        o = self._adapt
        generator = torch.Generator().manual_seed(int(o["seed"]))
        with torch.no_grad():
            features = self.backbone(support_x)
        head = new_head(self.head_type, features.shape[1], way, generator=generator, device=features.device)
        with torch.enable_grad():
            train_head(head, features, support_y, epochs=o["adapt_epochs"], lr=o["adapt_lr"],
                       batch_size=o["adapt_batch"], optimizer="sgd", momentum=0.9, dampening=0.9,
                       weight_decay=0.001, generator=generator)
        return lambda query_x: head(self.backbone(query_x))


@register
class BaselinePlusPlus(Baseline):
    """Baseline++ (Chen et al., 2019): the same pre-training with a cosine classifier
    (class-wise learned norms; scale 10 beyond 200 classes, 2 otherwise, or ``scale``)."""

    name = "baseline++"
    head_type = "cosine"


__all__ = ["Baseline", "BaselinePlusPlus"]
