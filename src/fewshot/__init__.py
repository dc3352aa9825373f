"""fewshot: learn new tasks from a few examples.

Meta-learning, transfer learning and model selection, all judged by one evaluation
protocol: fixed, seeded suites of N-way K-shot episodes, accuracy ± 95% CI.

The public API is importable from here: ``fewshot.load`` (a run, an exported model or
a Hugging Face backbone ``hf:...`` with a feature head, as a scikit-learn classifier),
``fewshot.FewShotClassifier`` (the scikit-learn estimator) and ``fewshot.NotFittedError``, ``fewshot.Trainer``,
``fewshot.TrainConfig``, ``fewshot.load_dataset``,
``fewshot.from_arrays``, ``fewshot.EpisodeSampler``, ``fewshot.image_folder`` and
``fewshot.image_files``, and the errors. Names that need torch are imported on first
use, so ``import fewshot`` (and ``fewshot --help``) stays fast. (``fewshot.evaluate`` is the
evaluation module: ``from fewshot.evaluate import evaluate``.)
"""

from .config import TrainConfig
from .errors import CheckpointError, ConfigError, DataError, FewShotError, StoreError, TrainingError

__version__ = "0.1.0"

# Names that need torch, imported (explicitly, on first access) from the module defining them.
_LAZY = {
    "load": "learner", "FewShotClassifier": "learner", "NotFittedError": "learner", "Trainer": "train", "TrainResult": "train",
    "EvalResult": "evaluate", "load_run": "runs", "load_dataset": "data", "from_arrays": "data",
    "ClassDataset": "data", "EpisodeSampler": "data", "image_folder": "images", "image_files": "images",
    "build_method": "methods",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module == "learner":
        from . import learner as found
    elif module == "train":
        from . import train as found
    elif module == "evaluate":
        from . import evaluate as found
    elif module == "runs":
        from . import runs as found
    elif module == "data":
        from . import data as found
    elif module == "images":
        from . import images as found
    elif module == "methods":
        from . import methods as found
    else:
        raise AttributeError(f"module 'fewshot' has no attribute '{name}'")
    value = getattr(found, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = ["CheckpointError", "ClassDataset", "ConfigError", "DataError", "EpisodeSampler", "EvalResult",
           "FewShotClassifier", "FewShotError", "NotFittedError", "StoreError", "TrainConfig", "Trainer", "TrainResult", "TrainingError",
           "__version__", "build_method", "from_arrays", "image_files", "image_folder", "load",
           "load_dataset", "load_run"]
