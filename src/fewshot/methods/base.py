"""The one interface every method implements, meta-learner or transfer strategy alike.

A method is an ``nn.Module`` that

* gives an outer-loop objective over a meta-batch of episodes (:meth:`Method.loss`),
  which the one trainer (:mod:`fewshot.train`) minimises; and
* adapts to a new task's support set and returns a predictor of query logits
  (:meth:`Method.adapt`), which the one evaluation path (:mod:`fewshot.evaluate`) calls.

The contract is declared here, once, so that nothing outside ``methods/`` has to guess
a method's nature from its name or by probing attributes:

``task`` / ``tasks``
    ``"classification"`` or ``"regression"``: what its predictors output (logits, or
    one value per query point). ``tasks`` lists what the class can do; a method that
    can do several (MAML) takes a ``task`` option and sets ``task`` per instance.
``test_mode``
    ``"eval"`` puts the module in eval mode at test time, so BatchNorm uses the running
    statistics gathered in meta-training (Prototypical, Matching, Relation Networks);
    ``"train"`` keeps train mode, so BatchNorm normalises with the statistics of the
    task's own batch (the transductive convention of MAML, Finn et al., 2017).
``learns_across_tasks``
    Whether :meth:`loss` exists, i.e. whether the trainer can (meta-)train it.
``needs_backbone``
    Whether it is built around a feature extractor (``backbone``). Methods that need
    neither (the pixel baseline) can be evaluated by name, without a run.
``backbone`` / :meth:`features`
    The feature extractor (``None`` for methods without one) and the ``(n, d)``
    features it gives, as used for embeddings, transfer and model selection.
``head``
    The method's own classifier over backbone features, where it has one (MAML's
    output layer, Baseline's class head), else ``None``.

``own_step``
    Whether the gradient :meth:`loss` hands back is the negated update the method
    computed itself (TRPO's constrained step, Schulman et al. 2015, arXiv:1502.05477;
    PPO's epochs), which the trainer then applies as given: plain SGD at rate 1.

``get_params()`` / ``_parameter_constraints``
    A method's options are its constructor's parameters, declared once: the signature
    gives their names and defaults, the class's ``_parameter_constraints`` (a dict of
    :mod:`fewshot.params` constraints, scikit-learn's shape) what each may hold. The
    arguments are checked against it and kept at construction, and :meth:`get_params`
    returns them, so ``type(m)(m.backbone, **m.get_params())`` rebuilds ``m``; a run
    saves them (``method_options`` of its state).

A new method is one file in this package, a class decorated with :func:`register`.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.episodes import Episode
from ..errors import ConfigError
from ..models.feature_transform import learned_transforms
from ..params import Constraint, recording_init
from ..registry import Registry
from .lft import episode_loss, learning_to_learn_loss

Predictor = Callable[[torch.Tensor], torch.Tensor]

TASKS = ("classification", "regression")
TEST_MODES = ("eval", "train")

#: Every method by name: the built-in ones, a user's (:func:`register`) and plug-ins'.
METHODS: Registry[type["Method"]] = Registry("method", "`fewshot methods` lists them")


class Method(nn.Module):
    """Base class of every method (see the module docstring for the contract).

    Subclasses set ``name``, call ``super().__init__(backbone)`` and implement
    :meth:`adapt`; methods that learn across tasks implement either :meth:`loss`, or
    :meth:`episode_logits` (and, if not cross-entropy, :meth:`episode_loss`) to use
    the shared per-episode loop of :meth:`loss`.
    """

    name: ClassVar[str] = "method"
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    task: str = "classification"
    test_mode: ClassVar[str] = "eval"
    learns_across_tasks: ClassVar[bool] = True
    needs_backbone: ClassVar[bool] = True
    own_step: bool = False
    backbone: nn.Module | None
    head: nn.Module | None
    #: What each constructor option may hold (see the module docstring).
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {}

    def __init__(self, backbone: nn.Module | None = None):
        super().__init__()
        if backbone is not None and not isinstance(backbone, nn.Module):
            raise ConfigError(f"{self.name} needs a backbone network (an nn.Module), got {type(backbone).__name__}")
        self.backbone = backbone
        self.head = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.test_mode not in TEST_MODES:
            raise TypeError(f"{cls.__name__}.test_mode must be one of {TEST_MODES}, not {cls.test_mode!r}")
        if "__init__" in cls.__dict__:
            cls.__init__ = recording_init(cls, cls.__dict__["__init__"], "method", lambda m: type(m).name)

    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments but the backbone, defaults filled in (scikit-learn's
        ``get_params``): an option the method keeps as a plain attribute of the same name
        reads as that attribute holds it now (resolved, as MAML's ``inner_lr``, or changed
        by :meth:`set_test_options`), the others as they were given."""
        attributes = vars(self)  # plain attributes only: nn.Module keeps parameters and modules elsewhere
        return {k: attributes.get(k, v) for k, v in getattr(self, "_params", {}).items()}

    # -- features ----------------------------------------------------------------------

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature extractor's output for ``x``, flattened to ``(n, d)``."""
        if self.backbone is None:
            raise ConfigError(f"{self.name} has no backbone to extract features with")
        return self.backbone(x).flatten(1)

    # -- meta-training -----------------------------------------------------------------

    def loss(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean outer-loop loss over ``episodes`` and metrics (at least ``accuracy`` in %).

        The default is the per-episode loop every metric-based learner shares: the
        query logits of each episode (:meth:`episode_logits`) scored by
        :meth:`episode_loss`, averaged over the meta-batch.
        """
        if not self.learns_across_tasks:
            raise ConfigError(f"{self.name} learns nothing across tasks; evaluate it directly")
        if learned_transforms(self.backbone):  # learned FT layers: learning-to-learn (fewshot.methods.lft)
            return learning_to_learn_loss(self, episodes)
        loss, acc = episode_loss(self, episodes)
        return loss, {"accuracy": acc}

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        """Query logits ``(queries, way)`` of one training episode (for the default :meth:`loss`)."""
        raise NotImplementedError(f"{self.name} implements neither loss() nor episode_logits()")

    def episode_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One episode's loss from its query logits: cross-entropy unless a method says otherwise."""
        return F.cross_entropy(logits, labels)

    # -- adaptation --------------------------------------------------------------------

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        """Adapt to a support set and return ``query_x -> logits (n, way)``."""
        raise NotImplementedError

    def source_classes(self) -> list[int] | None:
        """The dataset class ids its ``head`` classifies, in row order, for a head over a
        training split's classes (Baseline); ``None`` otherwise."""
        return None

    def set_test_options(self, **options) -> None:
        """Change how :meth:`adapt` works at test time (e.g. MAML's ``inner_steps``).

        Methods with test-time options override this; the default takes none.
        """
        if options:
            raise ConfigError(f"{self.name} takes no test-time option {', '.join(sorted(options))}")


def register(cls: type[Method]) -> type[Method]:
    """Add a :class:`Method` subclass to :data:`METHODS` under its ``name``: a decorator
    for the class's definition. Another class under a taken name is refused."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"register() takes a Method subclass, got {cls!r}")
    return METHODS.register(cls.name, cls)


def class_means(features: torch.Tensor, labels: torch.Tensor, way: int) -> torch.Tensor:
    """Mean feature of each class ``0 .. way-1``: ``(way, d)``."""
    sums = torch.zeros(way, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=way).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]
