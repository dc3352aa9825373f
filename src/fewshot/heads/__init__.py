"""Heads on features: test-time classifiers over any backbone's features (see :mod:`.base`
for the contract), registered by name in :data:`HEADS` (a :class:`~fewshot.registry.Registry`:
``@register_head`` where each is defined; plug-ins add theirs the same way).

Inductive: ``simpleshot`` (SimpleShot nearest centroid, UN/L2N/CL2N), ``logistic``
(logistic-regression probe). Transductive (they see the episode's queries at once):
``bdcspn``, ``tim``, ``ptmap``, ``laplacianshot``, ``transductive_finetune``.

An evaluation runs a head over an episode's features with :func:`run_head`
(:func:`fewshot.evaluate.evaluate_head` runs a whole suite).
"""

from __future__ import annotations

from .base import HEADS, Head, Predictor, build_head, head_options, register_head, run_head
from .bdcspn import BDCSPN
from .finetune import TransductiveFinetune
from .laplacianshot import LaplacianShot
from .logistic import LogisticProbe
from .ptmap import PTMAP
from .simpleshot import NearestCentroid
from .tim import TIM

__all__ = ["BDCSPN", "HEADS", "Head", "LaplacianShot", "LogisticProbe", "NearestCentroid", "PTMAP", "Predictor",
           "TIM", "TransductiveFinetune", "build_head", "head_options", "register_head", "run_head"]
