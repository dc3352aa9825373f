"""The HTML report: every figure drawn from real runs, written atomically, shown by a browser."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.report import FIGURES, build_report, load_selection, selection_from_rows
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
    assert f"{len(FIGURES)} figure(s)" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    summary = json.loads((out / "report.json").read_text())
    assert summary["missing"] == {} and sorted(summary["figures"]) == sorted(FIGURES)
    for name in FIGURES:
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


def test_report_replaces_its_own_folder_only(evaluated, tmp_path, capsys):
    out = tmp_path / "rep"
    build_report([evaluated / "a"], out, runs=evaluated)
    (out / "stale.png").write_bytes(b"old")
    build_report([evaluated / "a"], out, runs=evaluated)
    assert not (out / "stale.png").exists()  # replaced whole, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    assert main(["report", str(evaluated / "a"), "--out", str(other), "--runs", str(evaluated)]) == 2
    assert "not a fewshot report" in capsys.readouterr().err
    assert (other / "mine.txt").read_text() == "keep"


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


PROBE = """<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="page" src="rep/index.html" width="1200" height="900"></iframe>
<script>
document.getElementById("page").addEventListener("load", (event) => {
  let images;
  try {
    images = Array.from(event.target.contentDocument.images,
                        im => [im.getAttribute("src"), im.complete, im.naturalWidth, im.naturalHeight]);
  } catch (e) { images = String(e); }
  document.getElementById("result").textContent = JSON.stringify(images);
});
</script></body></html>
"""


def test_page_shows_its_images_in_headless_chromium(evaluated, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; CI installs it)")
    build_report([evaluated], tmp_path / "rep", runs=evaluated)
    # The probe page loads the report in a frame, waits for it (and so its images) to
    # load, and writes what each <img> decoded to; --dump-dom prints the result.
    (tmp_path / "probe.html").write_text(PROBE)
    proc = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--allow-file-access-from-files",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           (tmp_path / "probe.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    start = proc.stdout.index('<pre id="result">') + len('<pre id="result">')
    images = json.loads(proc.stdout[start: proc.stdout.index("</pre>", start)])
    assert sorted(src for src, *_ in images) == sorted(f"{name}.png" for name in FIGURES)
    for src, complete, width, height in images:
        assert complete and width > 200 and height > 200, (src, width, height)
