"""The report's return-against-adaptation-steps panel, for reinforcement runs.

An ``evaluate`` record of a reinforcement run (``fewshot evaluate RUN --adapt-steps K``)
holds the mean return after 0, 1, ..., K adaptation steps and its 95 % interval
(``by_step``: policy-gradient steps for MAML-RL, episodes of a trial after the first for
RL²). One line per run and suite: the latest record of each, with its run's label and
colour (:func:`fewshot.report.content.palette`). A figure like Finn et al.'s (2017,
arXiv:1703.03400) figure 5.
"""

from __future__ import annotations

from typing import Sequence

from .. import plots
from ..data.tasks import task_kind
from .content import Missing, RunInfo


def returns_against_steps(store, runs: Sequence[RunInfo], colors: dict[str, str]) -> list[plots.Series]:
    """One :class:`~fewshot.plots.Series` of returns (``accuracy`` holds the return) per
    reinforcement run and evaluated suite, ten at most."""
    by_dir = {str(r.path): r for r in runs if task_kind(r.config.dataset).rollouts}
    latest: dict[tuple, dict] = {}
    for record in store.list(kind="evaluate"):  # ordered by id: later records replace earlier ones
        steps = record["metrics"].get("by_step")
        if record["run_dir"] in by_dir and record["metrics"].get("metric") == "return" and steps:
            c = record["config"]
            latest[(record["run_dir"], record["dataset"], record["split"], record["seed"], c.get("shot"),
                    c.get("episodes"))] = record
    if not latest:
        raise Missing("no reinforcement run among these was evaluated: run `fewshot evaluate RUN --adapt-steps K` "
                      "with the same --runs")
    several = len({key[1:] for key in latest}) > 1
    series = []
    for key, record in list(latest.items())[:10]:
        run = by_dir[key[0]]
        steps = record["metrics"]["by_step"]
        label = run.label + (f" ({record['dataset']}, {record['config'].get('shot')} rollouts)" if several else "")
        series.append(plots.Series(label, [s["steps"] for s in steps], [s["return"] for s in steps],
                                   [s["ci95"] for s in steps], color=colors.get(run.label)))
    return series


__all__ = ["returns_against_steps"]
