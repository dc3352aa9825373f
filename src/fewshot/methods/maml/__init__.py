"""Gradient-based meta-learning: MAML, first-order MAML, Meta-SGD and ANIL.

* MAML (Finn, Abbeel and Levine, ICML 2017, arXiv:1703.03400): learn an initialisation from which a few
  gradient steps on a task's support set give low loss on its query set. The
  meta-gradient differentiates through the inner steps (second order) unless
  ``first_order=True`` (FOMAML, registered as ``fomaml``), which treats the inner
  gradients as constants. ``learn_inner_lr=True`` learns one inner learning rate per
  step and per parameter tensor (the "LSLR" of Antoniou et al.'s MAML++, 2019).
* Meta-SGD (Li, Zhou, Chen and Li, 2017, arXiv:1707.09835): one learning rate per parameter *element*,
  learned in the outer loop with the initialisation (``metasgd``).
* ANIL (Raghu, Raghu, Bengio and Vinyals, ICLR 2020, arXiv:1909.09157): the inner loop adapts the head
  only; the body is shared by all tasks and learned in the outer loop (``anil``).

Reptile lives in :mod:`fewshot.methods.reptile`, MAML++ (Antoniou et al., 2019,
arXiv:1810.09502) in :mod:`fewshot.methods.mamlpp`. ``boil=True`` makes MAML, FOMAML,
Meta-SGD or MAML++ BOIL (Oh et al., 2021, arXiv:2008.08882): the inner loop adapts the body, not the head.

The package, one concept to a module:

* :mod:`.family`: the methods' declaration and their options (:data:`OPTIONS`): MAML's
  constructor, its model (backbone and head) and its meta-training step
  (:meth:`MAML.loss`, the meta-gradient chunk by chunk); FOMAML, Meta-SGD and ANIL;
* :mod:`.adaptation`: what both paths share: a task's start weights, the inner
  learning rates and the inner loop;
* :mod:`.per_task`: the per-task path, one task at a time, run functionally (any
  module; evaluation);
* :mod:`.batched`: the task-batched path, the tasks of a meta-batch as one batched
  computation, in chunks sized by :meth:`MAML._auto_chunk`.

Runtime tuning (the memory allocator) is :mod:`fewshot.runtime`'s, not an option of MAML.
"""

from __future__ import annotations

from .family import ANIL, DEFAULT_INNER_LR, FOMAML, MAML, OPTIONS, MetaSGD
from .per_task import AdaptedPredictor

__all__ = ["ANIL", "AdaptedPredictor", "DEFAULT_INNER_LR", "FOMAML", "MAML", "MetaSGD", "OPTIONS"]
