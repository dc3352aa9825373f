"""Shared fixtures: the real Omniglot (skipped when absent), isolated data roots, fake archives."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# A small stand-in for Omniglot in the official layout: set -> alphabet -> characters.
FAKE_OMNIGLOT = {
    "images_background": {"Alpha": 3, "Beta": 2},
    "images_evaluation": {"Gamma": 2},
}
FAKE_VINYALS = {"train": ["Alpha"], "val": ["Beta"], "test": ["Gamma"], "trainval": ["Alpha", "Beta"]}


@pytest.fixture(scope="session", autouse=True)
def _private_run_store(tmp_path_factory):
    """Runs recorded without --runs go to a private store, never the user-level one."""
    if "FEWSHOT_RUNS" not in os.environ:
        os.environ["FEWSHOT_RUNS"] = str(tmp_path_factory.mktemp("run-store"))
        yield
        del os.environ["FEWSHOT_RUNS"]
    else:
        yield


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    """The data root holding the real Omniglot, from $FEWSHOT_DATA."""
    root = os.environ.get("FEWSHOT_DATA")
    if not root or not (Path(root) / "omniglot").is_dir():
        pytest.skip("real Omniglot not found: set FEWSHOT_DATA to a folder holding omniglot/ (`make test` does)")
    return Path(root)


@pytest.fixture(scope="session")
def omniglot(omniglot_root):
    """The real Omniglot, loaded once (the first load decodes it, later ones read the cache)."""
    from fewshot.data.omniglot import load_omniglot

    return load_omniglot(omniglot_root)


@pytest.fixture
def tmp_root(tmp_path, monkeypatch) -> Path:
    """An empty data root with a private cache; downloads allowed."""
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FEWSHOT_OFFLINE", raising=False)
    root = tmp_path / "data"
    root.mkdir()
    return root


def _png(seed: int, size: int = 12) -> bytes:
    """A random black-on-white binary drawing, PNG-encoded like the official ones (mode '1')."""
    pixels = np.random.default_rng(seed).random((size, size)) < 0.8
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("1").save(buffer, format="PNG")
    return buffer.getvalue()


def write_fake_omniglot(folder: Path, drawers: int = 20) -> dict[str, Path]:
    """Fake ``images_background.zip``, ``images_evaluation.zip`` and Vinyals split files in ``folder``.

    Returns the written paths by name (split files as ``splits/vinyals/<split>.txt``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    written, char_id = {}, 0
    for set_name, alphabets in FAKE_OMNIGLOT.items():
        path = folder / f"{set_name}.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for alphabet, count in alphabets.items():
                for c in range(1, count + 1):
                    char_id += 1
                    for drawer in range(1, drawers + 1):
                        name = f"{set_name}/{alphabet}/character{c:02d}/{char_id:04d}_{drawer:02d}.png"
                        archive.writestr(name, _png(char_id * 100 + drawer))
        written[path.name] = path
    counts = {a: n for alphabets in FAKE_OMNIGLOT.values() for a, n in alphabets.items()}
    for split, alphabets in FAKE_VINYALS.items():
        lines = [f"{a}/character{c:02d}/rot{r:03d}" for a in alphabets for c in range(1, counts[a] + 1)
                 for r in (0, 90, 180, 270)]
        path = folder / "splits" / "vinyals" / f"{split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        written[f"splits/vinyals/{split}.txt"] = path
    return written


@pytest.fixture
def fake_omniglot():
    """The fake-archive writer, as a fixture so test modules need no imports from here."""
    return write_fake_omniglot


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread, and tests then do not fight each other or a
    benchmark for the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
