"""The meta-dataset of model selection, gathered: tasks × zoo models with the ground truth.

Each job has its own module; this one re-exports their public names so that
``from fewshot.select.builder import build_meta_dataset`` keeps working:

* :mod:`.tasks`: the held-out task groups and their episodes;
* :mod:`.metafeatures`: task and model meta-features, scores, images fitted to a model;
* :mod:`.measure`: the ground truth (query accuracy after a linear probe or fine-tuning);
* :mod:`.metastore`: the SQLite store of rows;
* :mod:`.pool`: the (parallel, resumable) build;
* :mod:`.uncertainty`: the meta-learner's held-out errors per model.
"""

from .measure import TARGETS, cross_validated_accuracy, measure
from .metafeatures import (CANONICAL_SHAPE, describe_candidates, describe_model, describe_task, extract, fit_images,
                           selection_row, source_probabilities)
from .metastore import MetaStore, complete, default_meta_path, open_meta, selection_costs
from .pool import META_FORMAT, META_VERSION, BuildResult, BuildSettings, build_meta_dataset
from .tasks import GROUPS, MAX_SUPPORT, SOURCES, Group, TaskSource, TaskSpec, sample_tasks, task_groups
from .uncertainty import prediction_errors, prediction_intervals

__all__ = ["BuildResult", "BuildSettings", "CANONICAL_SHAPE", "GROUPS", "Group", "MAX_SUPPORT", "META_FORMAT",
           "META_VERSION", "MetaStore", "SOURCES", "TARGETS", "TaskSource", "TaskSpec", "build_meta_dataset",
           "complete", "cross_validated_accuracy", "default_meta_path", "describe_candidates", "describe_model",
           "describe_task", "extract", "fit_images", "measure", "open_meta", "prediction_errors",
           "prediction_intervals", "sample_tasks", "selection_costs", "selection_row", "source_probabilities",
           "task_groups"]
