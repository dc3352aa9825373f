"""The HTML report: every figure drawn from real runs, written atomically, shown by a browser."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.report import FIGURES, build_report, load_selection, selection_from_rows
from fewshot.store import RunStore
from fewshot.taskkind import CLASSIFICATION
from fewshot.train import Trainer

from core_fixtures import digits8  # noqa: F401  (fixture)

pytest.importorskip("matplotlib")

# Two tiny Conv-4 runs on 8x8 digits that validate (on the test classes: digits has no
# val split), so every part of the report has data; seconds in all.
TINY = dict(dataset="digits", backbone="conv4", backbone_options={"width": 16, "depth": 2}, way=5, shot=2, query=3,
            val_split="test", val_every=10, val_episodes=20, episodes=30, checkpoint_every=100)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, digits8):
    """Runs a (lr 3e-3) and b (lr 1e-4), evaluated at several shots and ways, with a pixel baseline."""
    root = tmp_path_factory.mktemp("report")
    for name, lr in (("a", 3e-3), ("b", 1e-4)):
        Trainer(TrainConfig(lr=lr, **TINY), root / name, dataset=digits8, runs=root).run(progress=False)
    suites = [(5, 1), (5, 2), (5, 3), (2, 1), (3, 1)]
    for target in (str(root / "a"), str(root / "b"), "pixel-ncm"):
        for way, shot in suites[: 1 if target == "pixel-ncm" else None]:
            assert main(["evaluate", target, "--dataset", "digits", "--way", str(way), "--shot", str(shot),
                         "--query", "5", "--episodes", "30", "--runs", str(root), "--quiet"]) == 0
    return root


def _assert_real_png(path: Path) -> None:
    image = Image.open(path)
    image.load()  # decodes every pixel: a truncated file fails here
    assert image.width > 200 and image.height > 200
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    coloured = np.abs(pixels.astype(int) - pixels.mean(axis=1, keepdims=True)).max(axis=1) > 30
    assert coloured.mean() > 0.002, f"{path.name} has no coloured marks: an empty plot"


def test_report_draws_every_figure_from_real_runs(evaluated, capsys):
    out = evaluated / "out"
    assert main(["report", str(evaluated), "--out", str(out), "--runs", str(evaluated)]) == 0
    assert f"{len([n for n in FIGURES if n in CLASSIFICATION.panels])} figure(s)" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    summary = json.loads((out / "report.json").read_text())
    shown = [name for name in FIGURES if name in CLASSIFICATION.panels]  # every figure classification runs have
    assert set(summary["missing"]) == set(FIGURES) - set(shown) and sorted(summary["figures"]) == sorted(shown)
    for name in shown:
        assert f'src="{name}.png"' in page  # relative links: the folder works anywhere
        _assert_real_png(out / f"{name}.png")
    # Both runs and the untrained baseline were compared on the same 5-way 1-shot episodes,
    # with paired differences from the per-episode accuracies in the store.
    suite = [row for row in summary["comparison"] if "5-way 1-shot" in row["suite"]]
    assert {row["label"] for row in suite} == {"protonet [a]", "protonet [b]", "pixel-ncm"}
    assert all(row["best"] or row["paired_difference"] for row in suite)
    # Model selection by validation: one task per suite both runs were evaluated on.
    assert summary["model_selection"]["source"] == "validation" and len(summary["model_selection"]["regret"]) == 5
    assert not [p for p in evaluated.iterdir() if p.name.startswith(".out")], "temporary folders left behind"


def test_missing_data_is_explained_not_drawn(evaluated, tmp_path):
    report = build_report([evaluated / "a"], tmp_path / "rep", runs=tmp_path / "empty-store")
    assert {"learning_curves", "embedding_map"} <= set(report.figures)
    assert "fewshot evaluate" in report.missing["comparison"]
    assert "Not drawn" in report.path.read_text()


def test_model_selection_results_from_a_file(evaluated, tmp_path):
    rows = [{"task": "t1", "candidate": "x", "predicted": 0.9, "true": 0.70},
            {"task": "t1", "candidate": "y", "predicted": 0.8, "true": 0.75},
            {"task": "t2", "candidate": "x", "predicted": 0.5, "true": 0.60},
            {"task": "t2", "candidate": "y", "predicted": 0.4, "true": 0.50}]
    arrays = selection_from_rows(rows)
    assert arrays["regret"] == pytest.approx([5.0, 0.0])  # t1 picked x (70) where y had 75
    path = tmp_path / "selection.json"
    path.write_text(json.dumps({"rows": rows}))
    assert load_selection(path)["tasks"] == ["t1", "t2"]
    report = build_report([evaluated / "a"], tmp_path / "rep", runs=evaluated, selection=path)
    summary = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert summary["model_selection"]["source"] == "file"
    _assert_real_png(report.figures["model_selection"])


def test_missing_matplotlib_is_one_line(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'fewshot[report]'" in err[0]


def test_report_replaces_its_own_folder_only(evaluated, tmp_path, capsys):
    out = tmp_path / "rep"
    build_report([evaluated / "a"], out, runs=evaluated)
    first = json.loads((out / "report.json").read_text())
    build_report([evaluated / "a"], out, runs=evaluated)  # its own report: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
    assert json.loads((out / "report.json").read_text())["figures"] == first["figures"]
    # A file fewshot did not write, even inside an earlier report, is never deleted.
    (out / "stale.png").write_bytes(b"mine")
    assert main(["report", str(evaluated / "a"), "--out", str(out), "--runs", str(evaluated)]) == 2
    assert "did not write (stale.png)" in capsys.readouterr().err
    assert (out / "stale.png").read_bytes() == b"mine"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    assert main(["report", str(evaluated / "a"), "--out", str(other), "--runs", str(evaluated)]) == 2
    assert "not a fewshot report" in capsys.readouterr().err
    assert (other / "mine.txt").read_text() == "keep"


def test_a_folder_with_an_index_html_is_not_taken_for_a_report(evaluated, tmp_path, capsys):
    # issue 13: `mkdir -p site/blog; echo hi > site/index.html; echo x > site/thesis.tex; fewshot report RUN --out site`
    site = tmp_path / "site"
    (site / "blog").mkdir(parents=True)
    (site / "index.html").write_text("hi")
    (site / "thesis.tex").write_text("x")
    assert main(["report", str(evaluated / "a"), "--out", str(site), "--runs", str(evaluated)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a fewshot report" in err[0]
    assert (site / "thesis.tex").read_text() == "x" and (site / "blog").is_dir() and (site / "index.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"], "nothing left beside it"


KILLED_REPORT = """
import os, sys, time
from pathlib import Path
import fewshot.plots as plots
from fewshot.report import build_report

def stuck(*args, **kwargs):  # the report is half-built when this runs
    Path(sys.argv[3]).write_text("building")
    time.sleep(600)

plots.learning_curves = stuck
build_report([sys.argv[1]], sys.argv[2], runs=sys.argv[1])
"""


def test_a_killed_report_leaves_nothing_behind_for_good(evaluated, tmp_path):
    out, ready = tmp_path / "rep", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_REPORT, str(evaluated / "a"), str(out), str(ready)])
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the report process did not start building"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".rep.")]
    assert leftovers, "SIGKILL mid-build leaves the temporary folder (nothing can run on SIGKILL)"
    # ... which the next report to the same folder removes, and nothing else.
    (tmp_path / ".rep.mine").mkdir()  # a user's folder of a similar name, without fewshot's mark
    build_report([evaluated / "a"], out, runs=evaluated)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rep.mine", "ready", "rep"]


def _strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path.name} holds {constant}: not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_report_json_never_holds_nan(evaluated, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    # One episode: its 95% interval is undefined (NaN in the store).
    assert main(["evaluate", str(evaluated / "a"), "--dataset", "digits", "--way", "5", "--shot", "1", "--query", "5",
                 "--episodes", "1", "--runs", str(runs), "--quiet"]) == 0
    build_report([evaluated / "a"], tmp_path / "rep", runs=runs)
    summary = _strict_json(tmp_path / "rep" / "report.json")
    assert summary["comparison"][0]["ci95"] is None


@pytest.fixture(scope="module")
def unvalidated(tmp_path_factory, digits8):
    """A run without validation, evaluated, and pixel-ncm on its suite evaluated with other
    dataset options (the run trained with rotations; the test episodes are the same)."""
    root = tmp_path_factory.mktemp("unvalidated")
    config = TrainConfig(**{**TINY, "val_split": None, "dataset_options": {"rotations": True}, "checkpoint_every": 15})
    Trainer(config, root / "novalid", runs=root).run(progress=False)
    common = ["--way", "5", "--shot", "1", "--query", "5", "--episodes", "30", "--runs", str(root), "--quiet"]
    assert main(["evaluate", str(root / "novalid"), *common]) == 0
    assert main(["evaluate", "pixel-ncm", "--dataset", "digits", *common]) == 0
    # Bigger images are other episodes: that baseline must stay apart, under another title.
    assert main(["evaluate", "pixel-ncm", "--dataset", "digits", "--image-size", "16", *common]) == 0
    return root


def test_report_says_what_it_shows_without_validation(unvalidated, tmp_path):
    build_report([unvalidated / "novalid"], tmp_path / "rep", runs=unvalidated)
    summary = _strict_json(tmp_path / "rep" / "report.json")
    assert summary["learning_curves"]["title"].startswith("training-episode accuracy (no validation split)")
    assert summary["learning_curves"]["unvalidated"] == ["protonet"]
    (row,) = summary["embedding_map"]
    assert not any(title.startswith("best") for title in row["panels"]), row
    assert any("no validation, so no best" in title for title in row["panels"]), row


def test_learning_curve_title_says_validation_when_there_is_one(evaluated, tmp_path):
    build_report([evaluated / "a"], tmp_path / "rep", runs=tmp_path / "none")
    summary = _strict_json(tmp_path / "rep" / "report.json")
    assert summary["learning_curves"]["title"] == "validation accuracy (band: 95% CI)"
    assert summary["embedding_map"][0]["panels"][1].startswith("best (step")


def test_a_baseline_on_the_same_episodes_shares_the_panel(unvalidated, tmp_path):
    build_report([unvalidated / "novalid"], tmp_path / "rep", runs=unvalidated)
    summary = _strict_json(tmp_path / "rep" / "report.json")
    suites: dict[str, set] = {}
    for row in summary["comparison"]:
        suites.setdefault(row["suite"], set()).add(row["label"])
    # The run (trained and evaluated with rotations) and pixel-ncm (evaluated without) drew
    # identical test episodes: one panel. The 16-pixel baseline drew others: its own panel,
    # with a title that says how it differs.
    assert sorted(map(sorted, suites.values())) == [["pixel-ncm"], ["pixel-ncm", "protonet"]]
    assert len(suites) == 2 and any("image_size=16" in title for title in suites)


def test_one_label_and_one_colour_per_method_across_figures(evaluated, tmp_path):
    build_report([evaluated], tmp_path / "rep", runs=evaluated)
    summary = _strict_json(tmp_path / "rep" / "report.json")
    colors = summary["colors"]
    assert len(set(colors.values())) == len(colors)
    # Runs are labelled by method and folder in every figure.
    labels = {run["label"] for run in summary["runs"]}
    assert labels == {"protonet [a]", "protonet [b]"}
    assert {s["label"] for s in summary["learning_curves"]["series"]} == labels
    assert {row["run"] for row in summary["embedding_map"]} == labels
    for s in summary["learning_curves"]["series"]:
        assert s["color"] == colors[s["label"]]
    for row in summary["comparison"]:
        assert row["color"] == colors[row["label"]]
    for name in ("accuracy_vs_shots", "accuracy_vs_ways"):
        for s in summary[name]:
            assert s["color"] == colors[s["label"].split(",")[0]]


def test_accuracy_axes_start_at_a_stated_origin(monkeypatch, tmp_path):
    from fewshot import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or Path(path))
    plots.comparison([plots.Bars("suite", ["a", "b"], [91.0, 88.0], [1.0, 1.5])], tmp_path / "c.png")
    plots.accuracy_against([plots.Series("a", [1, 5], [80.0, 95.0], [2.0, 1.0])], tmp_path / "s.png",
                           xlabel="shots", title="t")
    plots.learning_curves([plots.Curve("a", [[10, 1.0, 60.0]], [[10, 70.0, 3.0]])], tmp_path / "l.png")
    comparison_ax, against_ax, curves_ax = drawn[0].axes[0], drawn[1].axes[0], drawn[2].axes[1]
    assert comparison_ax.get_xlim()[0] == plots.ACCURACY_ORIGIN == 0.0
    assert against_ax.get_ylim() == (plots.ACCURACY_ORIGIN, 100.0)
    assert curves_ax.get_ylim() == (plots.ACCURACY_ORIGIN, 100.0)
    assert "from 0 %" in comparison_ax.get_xlabel() and "from 0 %" in against_ax.get_ylabel()


PROBE = """<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="page" src="REPORT/index.html" width="1200" height="900"></iframe>
<script>
// The share of an image's pixels, as the browser decoded it, that are coloured (not
// white, grey or black): its visible marks.
function marks(im) {
  const canvas = document.createElement("canvas");
  canvas.width = im.naturalWidth;
  canvas.height = im.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(im, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let coloured = 0;
  for (let i = 0; i < data.length; i += 4) {
    const mean = (data[i] + data[i + 1] + data[i + 2]) / 3;
    if (Math.max(Math.abs(data[i] - mean), Math.abs(data[i + 1] - mean), Math.abs(data[i + 2] - mean)) > 30) {
      coloured++;
    }
  }
  return coloured / Math.max(1, data.length / 4);
}
document.getElementById("page").addEventListener("load", (event) => {
  let sections;
  try {
    // Each figure's section: its image (src, loaded, size, marks), or the text said instead.
    sections = Array.from(event.target.contentDocument.querySelectorAll("h2[id]"), (h) => {
      const next = h.nextElementSibling;
      const im = next ? next.querySelector("img") : null;
      if (im) {
        return [h.id, "image", im.getAttribute("src"), im.complete, im.naturalWidth, im.naturalHeight, marks(im)];
      }
      return [h.id, "text", next ? next.textContent : ""];
    });
  } catch (e) { sections = String(e); }
  document.getElementById("result").textContent = JSON.stringify(sections);
});
</script></body></html>
"""


def _shown_in_chromium(browser: str, folder: Path, report: str) -> list:
    """What headless Chromium shows of each figure of ``folder/report/index.html``."""
    probe = folder / f"probe-{report}.html"
    probe.write_text(PROBE.replace("REPORT", report))
    # The probe page loads the report in a frame, waits for it (and so its images) to
    # load, and writes what each section shows; --dump-dom prints the result.
    proc = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--allow-file-access-from-files",
                           f"--user-data-dir={folder / 'profile'}", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    start = proc.stdout.index('<pre id="result">') + len('<pre id="result">')
    sections = json.loads(proc.stdout[start: proc.stdout.index("</pre>", start)])
    assert isinstance(sections, list), sections  # a string: the probe's script failed
    assert [s[0] for s in sections] == list(FIGURES)
    return sections


def test_page_shows_its_images_in_headless_chromium(evaluated, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; CI installs it)")
    build_report([evaluated], tmp_path / "full", runs=evaluated)
    build_report([evaluated / "a"], tmp_path / "partial", runs=tmp_path / "empty-store")  # no evaluations
    shown_by = {report: _shown_in_chromium(browser, tmp_path, report) for report in ("full", "partial")}
    # The runs give data to every figure of their kind; the others (return against adaptation
    # steps, for reinforcement runs) say so in text.
    assert all((kind == "image") == (name in CLASSIFICATION.panels) for name, kind, *_ in shown_by["full"])
    assert any(kind == "text" for _, kind, *_ in shown_by["partial"])
    for report, sections in shown_by.items():
        for name, kind, *shown in sections:
            if kind == "image":  # every figure drawn has visible marks...
                src, complete, width, height, marks = shown
                assert src == f"{name}.png" and complete and width > 200 and height > 200, (report, shown)
                assert marks > 0.002, f"{report}/{src} shows no coloured marks in the browser: an empty figure"
            else:  # ...or the page says why it has none
                assert "no data because" in shown[0], (report, name, shown)


def test_accuracy_against_ticks_at_the_values_only_when_asked(monkeypatch, tmp_path):
    from fewshot import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or Path(path))
    series = [plots.Series("a", [0.37, 1.81, 2.93], [80.0, 90.0, 95.0], [2.0, 1.0, 1.0])]
    plots.accuracy_against(series, tmp_path / "a.png", xlabel="shots", title="t")
    plots.accuracy_against(series, tmp_path / "b.png", xlabel="CPU minutes", title="t", ticks_at_values=False)
    at_values, free = (list(fig.axes[0].get_xticks()) for fig in drawn)
    assert at_values == [0.37, 1.81, 2.93]
    assert free != at_values


def _coloured_share(path: Path, box: tuple[float, float, float, float]) -> float:
    """The share of coloured pixels in ``box`` (fractions left, top, right, bottom) of a PNG."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    pixels = np.asarray(image.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h))))
    pixels = pixels.reshape(-1, 3).astype(int)
    return float((np.abs(pixels - pixels.mean(axis=1, keepdims=True)).max(axis=1) > 30).mean())


def test_a_regret_of_zero_everywhere_is_shown_and_said(tmp_path):
    from fewshot import plots

    out = plots.model_selection([60.0, 70.0, 65.0, 80.0], [61.0, 72.0, 60.0, 79.0], [0.0, 0.0], tmp_path / "m.png",
                                tasks=["t1", "t2"])
    # The regret panel (the right half) has marks: a dot per task (and a note saying why no bar shows).
    assert _coloured_share(out, (0.55, 0.1, 1.0, 0.9)) > 0.0002  # bars of height 0 alone: 0


def test_a_single_validation_is_explained_not_a_lone_dot(monkeypatch, tmp_path):
    from fewshot import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or Path(path))
    once = plots.Curve("protonet", [[10, 1.0, 60.0], [20, 0.8, 70.0]], [[20, 70.0, 3.0]])
    twice = plots.Curve("protonet", [[10, 1.0, 60.0], [20, 0.8, 70.0]], [[10, 65.0, 3.0], [20, 70.0, 3.0]])
    plots.learning_curves([once], tmp_path / "once.png")
    plots.learning_curves([twice], tmp_path / "twice.png")
    plots.learning_curves([plots.Curve("nothing")], tmp_path / "empty.png")
    said = [" ".join(t.get_text() for t in ax.texts) for fig in drawn for ax in fig.axes]
    assert "validated once (protonet: step 20)" in said[1] and "--val-every" in said[1]
    assert said[3] == ""  # two validations are a curve: nothing to explain
    assert said[4].startswith("no data because") and said[5].startswith("no data because")


def test_return_against_adaptation_steps_for_reinforcement_runs(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "maml-rl", "--env", "bandit-5", "--meta-batch", "2", "--rollouts", "5", "--inner-lr", "0.5",
                 "--episodes", "2", "--val-split", "none", "--first-order", "--out", str(run), "--runs", str(tmp_path),
                 "--quiet"]) == 0
    report = build_report([run], tmp_path / "rep", runs=tmp_path)
    assert "fewshot evaluate RUN --adapt-steps K" in report.missing["return_vs_steps"]
    assert main(["evaluate", str(run), "--adapt-steps", "2", "--episodes", "6", "--runs", str(tmp_path),
                 "--quiet"]) == 0
    report = build_report([run], tmp_path / "rep", runs=tmp_path)
    _assert_real_png(report.figures["return_vs_steps"])
    (line,) = json.loads((tmp_path / "rep" / "report.json").read_text())["return_vs_steps"]
    evaluated = RunStore(tmp_path).list(kind="evaluate")[-1]["metrics"]["by_step"]
    assert line["label"] == "maml-rl" and line["steps"] == [0, 1, 2]
    assert line["return"] == [s["return"] for s in evaluated] and line["ci95"] == [s["ci95"] for s in evaluated]
    assert "return_vs_steps" not in report.missing and "comparison" in report.missing
