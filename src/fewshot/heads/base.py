"""The Head contract: what turns a backbone's features and a support set into a predictor.

A head works on features, at test time, with no meta-training: given an episode's
support features ``(n, d)``, their labels ``(n,)`` in ``0 .. way-1`` and (for a
transductive head) the episode's query features ``(m, d)``, :meth:`Head.fit` returns a
predictor ``query_features -> logits (m, way)``.

``transductive``
    A transductive head sees all queries of the episode at once (their structure moves
    its decision): :meth:`Head.fit` requires ``query_features`` and its predictor scores
    those queries (the result depends on the whole query set, so results must be marked
    transductive and the query count per class recorded with them).
``uses_base_features``
    The head can use features of the base (training) classes, given once through
    :meth:`Head.fit_base` (SimpleShot's centring on the base-class mean).

Options are the methods' contract (:mod:`fewshot.methods.base`): the constructor's keyword
arguments are the options (:func:`head_options`), what each may hold is declared once in
the class dict ``_parameter_constraints`` and checked before the constructor runs, and
:meth:`Head.get_params` gives them back, defaults filled in. A constructor keeps each
option as the attribute of its name (scikit-learn's convention). Heads register where
they are defined (:func:`register_head`, into :data:`HEADS`, a
:class:`~fewshot.registry.Registry`). Heads create tensors only on their inputs' device
and in their dtype.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..methods.protonet import prototype_logits
from ..params import Constraint, check_known, recording_init
from ..registry import Registry

Predictor = Callable[[torch.Tensor], torch.Tensor]

#: Every head by name (filled by :func:`register_head` where each head is defined).
HEADS: Registry[type["Head"]] = Registry("head", "`fewshot heads` describes them")


class Head:
    """Base class of every head (see the module docstring for the contract).

    A subclass sets ``name`` and ``transductive``, declares its options as keyword
    arguments of ``__init__`` (keeping each as the attribute of its name; they are
    checked against ``_parameter_constraints`` before its body runs) and implements
    :meth:`_fit`.
    """

    name: ClassVar[str] = "head"
    transductive: ClassVar[bool] = False
    uses_base_features: ClassVar[bool] = False
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = recording_init(cls, cls.__dict__["__init__"], "head", lambda h: f"head '{type(h).name}'")

    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments, defaults filled in (scikit-learn's ``get_params``), as
        the attributes of their names hold them now: what a result records."""
        attributes = vars(self)
        return {k: attributes.get(k, v) for k, v in getattr(self, "_params", {}).items()}

    def options(self) -> dict:
        """The same as :meth:`get_params` (the name the benchmarks use)."""
        return self.get_params()

    def needs_base_features(self) -> bool:
        """Whether :meth:`fit_base` changes what this head does (its class uses base features;
        a head with a ``norm`` option uses them only to centre, with ``CL2N``)."""
        return self.uses_base_features and getattr(self, "norm", "CL2N") == "CL2N"

    def fit_base(self, base_features: torch.Tensor) -> "Head":
        """Take what the head needs from base-class features (``(n, d)``); the default needs nothing."""
        return self

    def fit(self, support_features: torch.Tensor, support_labels: torch.Tensor, way: int,
            query_features: torch.Tensor | None = None) -> Predictor:
        """Fit on a support set (and, if transductive, the episode's queries); returns
        ``query_features -> logits (m, way)`` in the features' dtype and device."""
        check_episode(self, support_features, support_labels, way, query_features)
        return self._fit(support_features, support_labels, int(way), query_features)

    def _fit(self, support: torch.Tensor, labels: torch.Tensor, way: int,
             query: torch.Tensor | None) -> Predictor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"


def check_episode(head: Head, support: torch.Tensor, labels: torch.Tensor, way: int,
                  query: torch.Tensor | None) -> None:
    """Refuse, in one line, an episode a head cannot fit."""
    owner = f"head '{head.name}'"
    if not (isinstance(way, int) and not isinstance(way, bool) and way >= 1):
        raise ConfigError(f"{owner}: way must be a positive integer, got {way!r}")
    if support.ndim != 2 or not support.is_floating_point():
        raise DataError(f"{owner}: support features must be a floating (n, d) tensor, got {support.dtype} "
                        f"of shape {tuple(support.shape)}")
    if labels.shape != (len(support),) or labels.dtype != torch.int64:
        raise DataError(f"{owner}: support labels must be an int64 (n,) tensor matching the {len(support)} "
                        f"support features, got {labels.dtype} of shape {tuple(labels.shape)}")
    if query is None:
        if head.transductive:
            raise ConfigError(f"{owner} is transductive: fit() needs the episode's query features")
    elif query.ndim != 2 or query.shape[1] != support.shape[1] or query.dtype != support.dtype:
        raise DataError(f"{owner}: query features must be ({'m'}, {support.shape[1]}) {support.dtype}, "
                        f"got {query.dtype} of shape {tuple(query.shape)}")
    if labels.device.type != "meta" and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= way):
        raise DataError(f"{owner}: support labels must lie in 0..{way - 1}")


def register_head(cls: type[Head]) -> type[Head]:
    """Add a :class:`Head` subclass to :data:`HEADS` under its ``name`` (a decorator for the
    class's definition); another class under a taken name is refused."""
    if not (isinstance(cls, type) and issubclass(cls, Head)):
        raise ConfigError(f"register_head() takes a Head subclass, got {cls!r}")
    return HEADS.register(cls.name, cls)


def head_options(cls: type[Head]) -> dict[str, inspect.Parameter]:
    """The options of head class ``cls`` (its constructor's keyword arguments) with their defaults."""
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


def build_head(name: str, **options) -> Head:
    """The head ``name`` with ``options``; an unknown name (the registry's message) or
    option, or a value an option cannot hold, is a one-line :class:`ConfigError`."""
    cls = HEADS[name]
    check_known(f"head '{name}'", options, head_options(cls), how=f" (`fewshot heads {name}` gives their defaults)")
    return cls(**options)


def run_head(head: Head, support_features: torch.Tensor, support_labels: torch.Tensor, way: int,
             query_features: torch.Tensor) -> torch.Tensor:
    """The query logits ``(m, way)`` of ``head`` on one episode's features: what an
    evaluation calls per episode (a transductive head is given the queries to fit on)."""
    predictor = head.fit(support_features, support_labels, way,
                         query_features if head.transductive else None)
    return predictor(query_features)


# -- shared pieces -----------------------------------------------------------------------

NORMS = ("UN", "L2N", "CL2N")


def normalizer(norm: str, centre: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """SimpleShot's feature transform (Wang et al. 2019, arXiv:1911.04623): ``UN`` keeps
    the features, ``L2N`` L2-normalises them, ``CL2N`` subtracts ``centre`` then L2-normalises."""
    if norm == "UN":
        return lambda x: x
    if norm == "L2N":
        return lambda x: F.normalize(x, dim=1)
    return lambda x: F.normalize(x - centre.to(x.dtype), dim=1)


def one_hot(labels: torch.Tensor, way: int, dtype: torch.dtype) -> torch.Tensor:
    """``(n, way)`` one-hot rows of ``labels`` (made with a comparison, so it also works on the meta device)."""
    return (labels[:, None] == torch.arange(way, device=labels.device)[None]).to(dtype)


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(len(x), len(y))`` cosine similarities."""
    return F.normalize(x, dim=1) @ F.normalize(y, dim=1).T


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(len(x), len(y))`` squared Euclidean distances (ProtoNet's one-matmul form, clamped at 0)."""
    return (-prototype_logits(x, y, "euclidean")).clamp_min(0)


def prototypes(features: torch.Tensor, labels: torch.Tensor, way: int) -> torch.Tensor:
    """Mean feature of each class ``0 .. way-1``, ``(way, d)`` (a class without support
    examples gets zeros). As a one-hot matmul rather than
    :func:`fewshot.methods.class_means`' bincount, which has no meta-device kernel."""
    weights = one_hot(labels, way, features.dtype)
    return (weights.T @ features) / weights.sum(0).clamp_min(1)[:, None]
