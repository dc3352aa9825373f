"""The README and the documentation pages: links that resolve, every page in the site's nav,
front-page figures that come from benchmarks/results/, and an install that is honest about
what it needs.

Cheap and without MkDocs, so `make test` covers it; `make docs` runs the full `mkdocs build
--strict` and then this file's link checks as a script (`python tests/test_docs.py`).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Figures the pages show that are copies of benchmark outputs (MkDocs serves only docs/).
FIGURE_COPIES = {
    "docs/figures/maml60_summary.png": "benchmarks/results/maml60/summary.png",
    "docs/figures/rl_navigation.png": "benchmarks/results/rl_navigation.png",
    "docs/figures/budget_curves-best.png": "benchmarks/results/budget_curves-best.png",
    "docs/figures/budget_curves_long-best.png": "benchmarks/results/budget_curves_long-best.png",
    "docs/figures/budget_curves_60w-best.png": "benchmarks/results/budget_curves_60w-best.png",
}

_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _prose(text: str) -> str:
    """The text outside fenced code blocks and code spans: where links are links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _heading_text(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    return re.sub(r"[`*_]", "", text)


def mkdocs_slug(heading: str) -> str:
    """Python-Markdown's toc slugify (MkDocs' default)."""
    value = unicodedata.normalize("NFKD", _heading_text(heading)).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def github_slug(heading: str) -> str:
    """GitHub's heading anchors: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", _heading_text(heading).strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Anchors that both MkDocs and GitHub give the page's headings (links must work on both)."""
    headings = _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8")))
    return {mkdocs_slug(h) for h in headings} & {github_slug(h) for h in headings}


def broken_links(path: Path) -> list[str]:
    """Each relative link of ``path`` whose file or heading does not exist, as 'file: target (why)'."""
    broken = []
    for target in _LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        name, _, anchor = target.partition("#")
        resolved = (path.parent / name).resolve() if name else path
        where = f"{path.relative_to(ROOT)}: {target}"
        if ROOT not in resolved.parents and resolved != ROOT:
            broken.append(f"{where} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{where} (no such file)")
        elif path.is_relative_to(DOCS) and not resolved.is_relative_to(DOCS):
            broken.append(f"{where} (outside docs/: the site would not have it)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{where} (no heading with that anchor)")
    return broken


def nav_pages() -> list[str]:
    """The pages named in mkdocs.yml's nav (read as text: no YAML parser needed)."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[text.index("\nnav:"):]
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav, re.M)


def test_relative_links_resolve():
    broken = [b for path in markdown_files() for b in broken_links(path)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_checker_catches_a_broken_link(tmp_path, monkeypatch):
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A section, with punctuation\n")
    page.write_text("[ok](other.md#a-section-with-punctuation) [gone](missing.md) [bad anchor](other.md#nope)\n"
                    "`[in code](missing.md)`\n\n```\n[in a block](missing.md)\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "DOCS", tmp_path / "docs")
    assert [b.split(": ", 1)[1] for b in broken_links(page)] == [
        "missing.md (no such file)", "other.md#nope (no heading with that anchor)"]


def test_every_page_is_in_the_nav():
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    nav = nav_pages()
    assert sorted(set(nav)) == sorted(nav), "a page is in the nav twice"
    assert pages - set(nav) == set(), "pages missing from mkdocs.yml's nav"
    assert set(nav) - pages == set(), "nav entries with no page"


def test_figure_copies_match_their_benchmark_outputs():
    for copy, source in FIGURE_COPIES.items():
        assert (ROOT / copy).read_bytes() == (ROOT / source).read_bytes(), f"cp {source} {copy}"


def test_front_page_figures_come_from_benchmark_results():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    demo = {line.rstrip() for line in (ROOT / "benchmarks/results/demo_digits.txt").read_text().splitlines()}
    blocks = re.findall(r"^```\n(.*?)^```", readme, re.S | re.M)
    assert blocks, "the README shows the demo's table"
    for block in blocks:
        for line in block.splitlines():
            assert line.rstrip() in demo, f"not in benchmarks/results/demo_digits.txt: {line!r}"
    own = (ROOT / "benchmarks/results/own_task.txt").read_text()
    right, total, mean = re.search(r"(\d+) of (\d+) query images right, at a mean predicted probability of "
                                   r"([\d.]+) %", " ".join(readme.split())).groups()
    assert f"measured: {right}/{total} query images right" in own and f"mean predicted probability {mean} %" in own
    # The own-photos table: each row's figures are the benchmark's, row for row.
    photos = (ROOT / "benchmarks/results/own_photos.md").read_text(encoding="utf-8")
    measured = {tuple(re.findall(r"\d+\.\d ± \d+\.\d", line)[::2]) for line in photos.splitlines()}
    shown = [tuple(re.findall(r"\d+\.\d ± \d+\.\d", line)) for line in readme.splitlines()
             if re.match(r"\|.*\| \d+\.\d ± \d+\.\d % \| \d+\.\d ± \d+\.\d % \|$", line)]
    assert len(shown) >= 4 and all(row in measured for row in shown), shown
    speed = (ROOT / "benchmarks/results/own_photos_speed.md").read_text(encoding="utf-8")
    ratio, fewshot_cpu, script_cpu = re.search(r"([\d.]+)× the CPU time .*?([\d.]+) against ([\d.]+) CPU-s",
                                               " ".join(readme.split())).groups()
    assert f"| {fewshot_cpu} | {script_cpu} | {ratio}x |" in speed


# Import names whose distribution is called otherwise.
_DISTRIBUTION = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml"}


def _third_party_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / "src" / "fewshot").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top != "fewshot" and top not in sys.stdlib_module_names:
                    found.setdefault(_DISTRIBUTION.get(top, top).lower().replace("_", "-"), set()).add(
                        str(path.relative_to(ROOT)))
    return found


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", r).group().lower().replace("_", "-") for r in requirements}


def test_every_import_is_a_declared_dependency_or_extra():
    import pytest

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _requirement_names(project["dependencies"])
    extras = {name: _requirement_names(reqs) for name, reqs in project["optional-dependencies"].items()}
    extras["locomotion"] |= {"mujoco"}  # gymnasium[mujoco] installs it
    extras["tune"] |= {"sqlalchemy"}  # optuna's storage, which tune.py uses directly
    declared = runtime.union(*extras.values())
    undeclared = {dist: files for dist, files in _third_party_imports().items() if dist not in declared}
    assert not undeclared, f"imported but in neither dependencies nor an extra: {undeclared}"
    assert runtime.isdisjoint(extras["report"] | extras["hub"] | extras["tune"] | extras["rl"] | extras["test"])


_NO_EXTRAS = """
import importlib.abc, sys
class NoExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {BLOCKED}:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not a runtime dependency)")
sys.meta_path.insert(0, NoExtras())
sys.argv = ["fewshot", *sys.argv[1:]]
from fewshot.cli import main
sys.exit(main())
"""


def test_the_runtime_needs_no_extra(tmp_path):
    """With every extra's packages unimportable, the library's core and the commands a pip user
    starts with work, and a command that needs an extra says which in one line."""
    blocked = {"matplotlib", "optuna", "transformers", "huggingface_hub", "gymnasium", "mujoco", "pytest"}
    script = tmp_path / "run.py"
    script.write_text(_NO_EXTRAS.replace("{BLOCKED}", repr(blocked)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "FEWSHOT_RUNS": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}

    def fewshot(*args):
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)

    trained = fewshot("train", "protonet", "--dataset", "digits", "--episodes", "2", "--val-every", "2",
                      "--val-episodes", "2", "--out", str(tmp_path / "run"), "--quiet")
    assert trained.returncode == 0, trained.stderr
    evaluated = fewshot("evaluate", str(tmp_path / "run"), "--episodes", "3", "--json", "--quiet")
    assert evaluated.returncode == 0, evaluated.stderr
    assert '"accuracy"' in evaluated.stdout
    report = fewshot("report", str(tmp_path / "run"), "--out", str(tmp_path / "report"))
    assert report.returncode == 2 and "fewshot[report]" in report.stderr
    assert len(report.stderr.strip().splitlines()) == 1, report.stderr


if __name__ == "__main__":  # `make docs`: the link checks, without pytest
    failures = [b for path in markdown_files() for b in broken_links(path)]
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    failures += [f"docs/{page}: not in mkdocs.yml's nav" for page in sorted(pages - set(nav_pages()))]
    for line in failures:
        print(line, file=sys.stderr)
    print(f"links: {len(markdown_files())} files checked, {len(failures)} problems", file=sys.stderr)
    sys.exit(1 if failures else 0)
