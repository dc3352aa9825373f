"""``fewshot report``: a self-contained HTML page of figures about training runs.

The page (``index.html``) and its PNG figures lie side by side in one folder, linked
relatively, so the folder works offline and can be copied anywhere. The folder is
built under a temporary name beside its destination and renamed into place: a report
is never seen half-written, and it replaces only a folder that fewshot wrote.

What it shows, and where each part comes from:

* learning curves: each run's state's history (training loss every
  ``LOG_EVERY`` steps; validation accuracy and its 95% interval at each validation, or
  the training-episode accuracy of a run without validation, titled so);
* methods compared on identical episodes, accuracy against shots and against ways:
  the ``evaluate`` records of the run store that belong to the runs (and records of
  untrained baselines such as ``pixel-ncm`` on the same episodes);
* an embedding map: the query examples of one fixed test episode, embedded by the
  backbone at each checkpoint the run keeps (the initial weights, which the seed
  reproduces exactly, the best when a validation chose one, and the last), projected
  to 2-D;
* model selection: predicted against true accuracy and regret per task, from a results
  file (``--selection``), else from the runs themselves (selection by validation
  accuracy, judged by test accuracy).

The jobs are split: :mod:`.content` computes what is shown, :mod:`fewshot.plots` draws
it, :mod:`.page` writes the HTML, :mod:`.folder` publishes the folder safely and
:mod:`.build` ties them together.
"""

from .build import Report, build_report
from .content import (ACCURACY_ORIGIN, FIGURES, RunInfo, embed, evaluation_records, find_runs, load_selection,
                      selection_from_rows)

__all__ = ["ACCURACY_ORIGIN", "FIGURES", "Report", "RunInfo", "build_report", "embed", "evaluation_records",
           "find_runs", "load_selection", "selection_from_rows"]
