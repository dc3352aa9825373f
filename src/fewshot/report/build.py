"""``build_report``: the report's numbers (:mod:`.content`), drawn (:mod:`fewshot.plots`),
laid out (:mod:`.page`) and published (:mod:`.folder`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__, plots
from ..errors import ConfigError
from ..io import write_json
from ..progress import status
from . import adaptation, content, domains, folder, page
from .content import ACCURACY_ORIGIN, FIGURES, Missing


@dataclass
class Report:
    """Where a report went: its page, its figures by name, and why any figure is missing."""

    path: Path
    figures: dict[str, Path] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


def build_report(targets: Sequence[str | Path], out: str | Path, *, runs: str | Path | None = None,
                 selection: str | Path | None = None, data_root: str | Path | None = None,
                 embed_split: str = "test", projection: str = "pca", device=None) -> Report:
    """Write the report on the runs named by ``targets`` to the folder ``out`` (embedding
    maps computed on ``device``, a torch device; default the CPU).

    Figures without data are left out, and the page says what would give them data.
    ``runs`` is the runs folder holding the store of evaluate records. ``out`` must be
    absent, empty, or an earlier report holding only files fewshot wrote; it is replaced
    whole, by renames, so it is never seen half-written.
    """
    from ..store import RunStore
    from ..train import LOG_EVERY

    if projection not in ("pca", "tsne"):
        raise ConfigError(f"projection must be 'pca' or 'tsne', got '{projection}'")
    out = Path(out)
    folder.check_destination(out)
    folder.remove_leftovers(out)
    infos = content.find_runs(targets)
    store = RunStore(runs)
    datasets: dict = {}
    records = content.evaluation_records(store, infos, data_root=data_root, datasets=datasets)
    colors = content.palette(infos, records)
    chosen = content.load_selection(selection) if selection else None
    built = folder.new_build_folder(out)
    try:
        figures: dict[str, Path] = {}
        missing: dict[str, str] = {}
        notes: list[str] = []
        data: dict[str, Any] = {}

        def learning_curves() -> Path:
            curves = content.learning_curves(infos, colors)
            data["learning_curves"] = {"title": curves.title, "validated": curves.validated,
                                       "unvalidated": curves.unvalidated,
                                       "series": [{"label": c.label, "color": c.color} for c in curves.curves]}
            return plots.learning_curves(curves.curves, built / "learning_curves.png",
                                         score_title=curves.title)

        def comparison() -> Path:
            panels, data["comparison"] = content.comparison(records, colors)
            return plots.comparison(panels, built / "comparison.png")

        def against(varied: str) -> Callable[[], Path]:
            def draw() -> Path:
                series = content.against(records, varied, colors)
                data[f"accuracy_vs_{varied}s"] = [{"label": s.label, "color": s.color, "x": list(s.x),
                                                   "accuracy": list(s.accuracy)} for s in series]
                if varied == "shot":
                    return plots.accuracy_against(series, built / "accuracy_vs_shots.png", xlabel="shots per class (K)",
                                                  title="accuracy against shots per class")
                return plots.accuracy_against(series, built / "accuracy_vs_ways.png", xlabel="ways (N)",
                                              title="accuracy against ways (classes per task)")
            return draw

        def return_vs_steps() -> Path:
            series = adaptation.returns_against_steps(store, infos, colors)
            data["return_vs_steps"] = [{"label": s.label, "color": s.color, "steps": list(s.x),
                                        "return": list(s.accuracy), "ci95": list(s.ci95)} for s in series]
            return plots.accuracy_against(series, built / "return_vs_steps.png", xlabel="adaptation steps",
                                          title="return against adaptation steps", ylabel="return, error bar: 95% CI")

        def embedding_map() -> Path:
            status("embedding test images with each run's checkpoints, for the embedding map")
            rows = content.embedding_rows(infos, data_root, embed_split, projection, notes, datasets, device)
            data["embedding_map"] = [{"run": label, "panels": [p.title for p in panels]} for label, panels in rows]
            return plots.embedding_map(rows, built / "embedding_map.png",
                                       projection="PCA" if projection == "pca" else "t-SNE")

        def model_selection() -> Path:
            arrays = data["model_selection"] = content.model_selection(chosen, infos, records)
            label = "predicted accuracy (%)" if chosen else "validation accuracy (%), the predictor"
            return plots.model_selection(arrays["predicted"], arrays["true"], arrays["regret"],
                                         built / "model_selection.png", tasks=arrays["tasks"], predicted_label=label)

        steps = {"learning_curves": learning_curves, "comparison": comparison,
                 "accuracy_vs_shots": against("shot"), "accuracy_vs_ways": against("way"),
                 "return_vs_steps": return_vs_steps,
                 "embedding_map": embedding_map, "model_selection": model_selection}
        for name in FIGURES:
            try:
                figures[name] = steps[name]()
            except Missing as e:
                missing[name] = str(e)
        tables = {}
        if "comparison" in figures:
            tables["comparison"] = page.comparison_table(data["comparison"])
        data["domains"] = domains.domain_panel(records)  # fewshot evaluate RUN --domains: a table under the bars
        if data["domains"] is not None:
            tables["comparison"] = tables.get("comparison", "") + domains.domain_table(data["domains"])
        if "model_selection" in figures:
            tables["model_selection"] = page.selection_table(data["model_selection"])
        (built / "index.html").write_text(page.page(infos, figures, missing, tables, notes, store.path, LOG_EVERY),
                                          encoding="utf-8")
        write_json(built / "report.json", content.finite({
            "runs": [{"path": str(r.path), "label": r.label, "method": r.config.method, "color": colors.get(r.label)}
                     for r in infos],
            "colors": colors, "accuracy_axis_origin": ACCURACY_ORIGIN,
            "figures": {k: v.name for k, v in figures.items()}, "missing": missing, "notes": notes,
            "comparison": data.get("comparison", []), "model_selection": data.get("model_selection"),
            "learning_curves": data.get("learning_curves"), "accuracy_vs_shots": data.get("accuracy_vs_shots"),
            "accuracy_vs_ways": data.get("accuracy_vs_ways"), "return_vs_steps": data.get("return_vs_steps"),
            "embedding_map": data.get("embedding_map"), "domains": data.get("domains"),
            "version": __version__}))
        folder.publish(built, out)
    finally:
        folder.discard(built)  # nothing left when it failed; already renamed away when it worked
    return Report(out / "index.html", {k: out / v.name for k, v in figures.items()}, missing)
