"""Model selection: which pre-trained model to use for a new few-shot task.

Transferability scores of a task's support features (:mod:`.scores`, and N-LEEP and PARC in
:mod:`.nleep_parc`, registered on import), a meta-learner that
predicts each model's accuracy from task, model and score features (:mod:`.metalearner`, on
the table of :mod:`.table`), the baselines it is judged against (:mod:`.baselines`), their
leave-one-group-out comparison (:mod:`.comparison`),
and the metrics that judge a selection (:mod:`.metrics`).
"""

from .comparison import compare, held_out, leave_one_group_out, paired_differences
from .metalearner import MetaLearner
from .metrics import paired_difference, selection_report
from .nleep_parc import nleep, parc
from .scores import SCORES, ScoreNotApplicable, compute_scores

__all__ = ["SCORES", "MetaLearner", "ScoreNotApplicable", "compare", "compute_scores", "held_out",
           "leave_one_group_out", "nleep", "paired_difference", "parc", "paired_differences", "selection_report"]
