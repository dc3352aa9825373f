"""The report's domain x method panel: each method's accuracy on each domain it was tested on
(``fewshot evaluate RUN --domains ...``, :mod:`fewshot.crossdomain`), with the paired
difference to each domain's best method where both kept their per-episode accuracies."""

from __future__ import annotations

import html
from collections import defaultdict

import numpy as np

from ..metrics import confidence_interval


def domain_panel(records: list[dict]) -> dict | None:
    """``{"suite", "domains", "methods", "cells"}`` for the suite (split, seed, way, shot, query,
    episodes) tested on the most datasets, when that is at least two; else ``None``.
    ``cells[method][domain]``: accuracy, ci95, transductive, best, paired (None for the best)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        c, m = r.get("config") or {}, r.get("metrics") or {}
        if m.get("accuracy") is None:
            continue
        groups[(r.get("split"), r.get("seed"), c.get("way"), c.get("shot"), c.get("query"), m.get("episodes"))].append(r)
    if not groups:
        return None
    key, rows = max(groups.items(), key=lambda kv: (len({r["dataset"] for r in kv[1]}), len(kv[1])))
    domains = list(dict.fromkeys(r["dataset"] for r in rows))
    if len(domains) < 2:
        return None
    latest = {(r["label"], r["dataset"]): r for r in rows}  # ordered by id: later records replace earlier ones
    methods = list(dict.fromkeys(r["label"] for r in rows))
    cells: dict[str, dict[str, dict]] = {m: {} for m in methods}
    for d in domains:
        here = [latest[(m, d)] for m in methods if (m, d) in latest]
        best = max(here, key=lambda r: r["metrics"]["accuracy"])
        for r in here:
            mine, theirs = r["metrics"].get("per_episode"), best["metrics"].get("per_episode")
            paired = (confidence_interval(np.subtract(mine, theirs)) if r is not best and mine and theirs
                      and len(mine) == len(theirs) else None)
            cells[r["label"]][d] = {"accuracy": r["metrics"]["accuracy"], "ci95": r["metrics"]["ci95"],
                                    "transductive": bool(r["metrics"].get("transductive")), "best": r is best,
                                    "paired": paired}
    split, seed, way, shot, query, episodes = key
    return {"suite": {"split": split, "seed": seed, "way": way, "shot": shot, "query": query, "episodes": episodes},
            "domains": domains, "methods": methods, "cells": cells}


def domain_table(panel: dict) -> str:
    """The panel as an HTML table: a row per method, a column per domain."""
    s = panel["suite"]
    head = "".join(f"<th>{html.escape(str(d))}</th>" for d in panel["domains"])
    rows = []
    for m in panel["methods"]:
        cells = []
        for d in panel["domains"]:
            c = panel["cells"][m].get(d)
            if c is None:
                cells.append("<td class=num>-</td>")
                continue
            text = f"{c['accuracy']:.1f} ± {c['ci95']:.1f} %" + (" (transductive)" if c["transductive"] else "")
            text += " best" if c["best"] else (f"; {c['paired'][0]:+.1f} ± {c['paired'][1]:.1f} vs best"
                                               if c["paired"] else "")
            cells.append(f"<td class=num>{html.escape(text)}</td>")
        rows.append(f"<tr><td>{html.escape(str(m))}</td>{''.join(cells)}</tr>")
    note = (f"Domain x method: {s['way']}-way {s['shot']}-shot, {s['query']} queries per class, {s['episodes']} "
            f"episodes (seed {s['seed']}, split {s['split']}) on each domain, the same episodes for every method on a "
            "domain; ± 95% CI, and the paired difference to the domain's best method.")
    return (f"<h3 id=domains>Across domains</h3><p class=note>{html.escape(note)}</p>"
            f"<table><tr><th>method</th>{head}</tr>{''.join(rows)}</table>")


__all__ = ["domain_panel", "domain_table"]
