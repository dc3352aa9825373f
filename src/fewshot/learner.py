"""Your own task: a trained few-shot model as a scikit-learn-style classifier.

::

    import fewshot
    learner = fewshot.load("runs/proto")                 # a run folder or an exported model
    learner.fit(support_images, ["cat", "dog", "cat"])    # a few labelled images per class
    learner.predict(query_images)                         # -> array of those labels
    learner.predict_proba(query_images)                   # -> (n, classes), columns in classes_ order
    learner.save("model.safetensors")                     # ship it: fewshot.load reads it back

``fit`` takes any hashable labels and returns the learner, as scikit-learn's does;
``classes_`` holds them (sorted when they can be). Images are file paths, PIL images,
NumPy arrays or torch tensors in the layouts :mod:`fewshot.images` lists; they are
prepared as the model's training data was (size, channels, value range, stored with
the run and the exported model). The right train/eval mode is the method's own
(``Method.test_mode``): metric learners predict in eval mode; the MAML family
predicts in train mode on a copy, normalising each batch of queries with its own
statistics (the transductive setting of its papers), so their predictions depend on
which queries are predicted together.

Probabilities are ``softmax(logits / T)`` with a temperature T fitted to held-out
episodes (:mod:`fewshot.calibration`): by the trainer at the end of training, on the
validation split, and stored with the run. A run without one (trained before this
existed), or a transfer strategy (whose logits are not the run's), is calibrated when
loaded, on ``calibration_episodes`` episodes of the run's dataset; with 0 episodes, or
a dataset that cannot be loaded by name, T is 1 and ``calibration`` says so.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from .calibration import calibrate, test_copy
from .config import TrainConfig
from .errors import ConfigError, DataError
from .images import Preprocessing, to_tensor
from .methods.base import Method
from .runs import Run
from .runs.exported import write_model
from .taskkind import task_kind

#: Episodes a run without a stored temperature is calibrated on when loaded.
CALIBRATION_EPISODES = 50
#: Queries predicted at once (the batch a train-mode method normalises together).
BATCH = 256


class FewShotClassifier:
    """A trained method that classifies new images into classes seen only in ``fit``.

    Build one with :func:`load`. ``classes_`` (after ``fit``) are the labels in column
    order of :meth:`predict_proba`; ``temperature`` divides the logits;
    ``calibration`` says how it was fitted; ``preprocessing`` what inputs become.
    """

    def __init__(self, method: Method, preprocessing: Preprocessing, *, config: TrainConfig,
                 calibration: dict | None = None, source: dict | None = None, strategy: dict | None = None,
                 base: Method | None = None):
        if not task_kind(method).logits:
            raise ConfigError(f"{method.name} does {method.task}; a FewShotClassifier needs a classification method")
        self.method, self.preprocessing, self.config = method, preprocessing, config
        self.calibration = calibration or {"temperature": 1.0, "fitted": False}
        self.source, self.strategy = source or {}, strategy
        self._base = base if base is not None else method
        self._predictor = None
        self.classes_: np.ndarray | None = None

    @property
    def temperature(self) -> float:
        return float(self.calibration["temperature"])

    def __repr__(self) -> str:
        fitted = f", {len(self.classes_)} classes" if self.classes_ is not None else ", not fitted"
        how = f" + {self.strategy['name']}" if self.strategy else ""
        return (f"FewShotClassifier({self.method.name}{how}, inputs {'x'.join(map(str, self.preprocessing.image_shape))}"
                f", T={self.temperature:.3g}{fitted})")

    # -- scikit-learn's estimator methods ----------------------------------------------

    def fit(self, X: Any, y: Sequence[Hashable]) -> "FewShotClassifier":
        """Adapt to a support set: images ``X`` and one hashable label per image. Returns self."""
        x = to_tensor(X, self.preprocessing, "support images")
        labels = _labels(y, len(x))
        classes = _ordered(labels)
        if len(classes) < 2:
            raise DataError(f"support labels: a few-shot task needs at least 2 classes, got {len(classes)} "
                            f"({classes[0]!r})")
        index = {c: i for i, c in enumerate(classes)}
        sy = torch.tensor([index[label] for label in labels], dtype=torch.int64)
        model = test_copy(self.method)
        with torch.no_grad():  # methods whose adaptation needs gradients enable them themselves
            self._predictor = model.adapt(x, sy, len(classes))
        self.classes_ = _label_array(classes)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated class probabilities ``(n, len(classes_))``, columns in ``classes_`` order."""
        logits = self._logits(X)
        return torch.softmax(logits.double() / self.temperature, 1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable label of each image."""
        return self.classes_[self._logits(X).argmax(1).numpy()]

    def score(self, X: Any, y: Sequence[Hashable]) -> float:
        """Accuracy (fraction correct) on images ``X`` with true labels ``y``."""
        predicted = self.predict(X)
        labels = _labels(y, len(predicted))
        return float(np.mean([p == t for p, t in zip(predicted.tolist(), labels)]))

    def _logits(self, X: Any) -> torch.Tensor:
        if self._predictor is None:
            raise ConfigError("call fit(support_images, support_labels) before predicting")
        x = to_tensor(X, self.preprocessing, "query images")
        with torch.no_grad():
            out = torch.cat([self._predictor(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])
        return out.float()

    # -- shipping ----------------------------------------------------------------------

    def save(self, path: str | Path, *, card: str | None = None) -> Path:
        """Export to ``path`` (``.safetensors`` file, else a folder): see :mod:`fewshot.export`.
        An existing ``path`` that is not an export of the same form is refused, untouched.
        ``card``: a model card, the folder's ``README.md`` (``fewshot export --format hf``)."""
        return write_model(path, self.description(), self._base.state_dict(), card=card)

    def description(self) -> dict[str, Any]:
        """What an exported model records beside its weights."""
        return {"config": self.config.to_dict(), "image_shape": list(self.preprocessing.image_shape),
                "preprocessing": self.preprocessing.to_dict(), "calibration": self.calibration,
                "strategy": self.strategy, "source": self.source}


def load(path: str | Path, *, which: str = "best", backbone: torch.nn.Module | None = None,
         strategy: str | None = None, calibration_episodes: int = CALIBRATION_EPISODES, data_root=None,
         **strategy_options: Any) -> FewShotClassifier:
    """A :class:`FewShotClassifier` from a run folder or an exported model.

    ``which``: a run's ``best`` or ``last`` weights. ``backbone``: your module, for a run
    trained with your own backbone. ``strategy`` (e.g. ``"lp-ft"``, with its options):
    adapt with a transfer strategy instead of the method's own way.
    """
    loaded = Run.open(path).load(which, backbone=backbone)
    config, base, prep = loaded.config, loaded.method, loaded.preprocessing
    calibration, source, saved = loaded.calibration, loaded.source, loaded.strategy
    if saved and strategy is None:  # the exported learner's own strategy, unless another is asked for
        strategy, strategy_options = saved.get("name"), dict(saved.get("options") or {})
    method, chosen = base, None
    if strategy is not None:
        from .methods.transfer import wrap

        method = wrap(base, strategy, **strategy_options)
        chosen = {"name": strategy, "options": strategy_options}
        if not (calibration and calibration.get("strategy") == chosen):
            calibration = None  # the run's temperature is for its own logits, not the strategy's
    if not task_kind(method).logits:
        raise ConfigError(f"{path} holds a {method.task} model; fewshot.load gives classifiers")
    learner = FewShotClassifier(method, prep, config=config, calibration=calibration, source=source,
                                strategy=chosen, base=base)
    if not calibration:
        learner.calibration = _calibrate_on_run_data(method, config, calibration_episodes, data_root, chosen)
    return learner


def _calibrate_on_run_data(method: Method, config: TrainConfig, episodes: int, data_root, strategy) -> dict:
    """Fit T on the training data's validation (else training) split; T = 1 when that cannot be done."""
    from .calibration import calibration_sampler
    from .data import load_dataset

    if episodes < 1:
        return {"temperature": 1.0, "fitted": False, "why": "calibration_episodes=0", "strategy": strategy}
    try:
        data = load_dataset(config.dataset, data_root, **config.dataset_options)
        sampler, split = calibration_sampler(data, config)
    except (ConfigError, DataError) as e:
        warnings.warn(f"probabilities are not calibrated (temperature 1): the training data cannot be "
                      f"loaded to fit one ({e})", stacklevel=3)
        return {"temperature": 1.0, "fitted": False, "why": str(e), "strategy": strategy}
    return {**calibrate(method, sampler, episodes, split), "strategy": strategy}


def _labels(y: Any, n: int) -> list:
    if isinstance(y, (str, bytes)) or not hasattr(y, "__len__"):
        raise DataError(f"labels: expected a sequence of {n} labels, got {type(y).__name__}")
    labels = y.tolist() if isinstance(y, (np.ndarray, torch.Tensor)) else list(y)
    if len(labels) != n:
        raise DataError(f"labels: {n} images but {len(labels)} labels; give one label per image")
    for label in labels:
        try:
            hash(label)
        except TypeError:
            raise DataError(f"labels must be hashable (str, int, ...), got {type(label).__name__}") from None
        if isinstance(label, float) and math.isnan(label):
            raise DataError("labels: NaN is not a label; give every image a class")
    return labels


def _ordered(labels: list) -> list:
    """Distinct labels, sorted when they can be (scikit-learn's order), else in order of appearance."""
    distinct = list(dict.fromkeys(labels))
    try:
        return sorted(distinct)
    except TypeError:
        return distinct


def _label_array(classes: list) -> np.ndarray:
    kinds = {type(c) for c in classes}
    if len(kinds) == 1 and kinds <= {str, int, float}:
        return np.asarray(classes)
    out = np.empty(len(classes), dtype=object)
    out[:] = classes
    return out


__all__ = ["CALIBRATION_EPISODES", "FewShotClassifier", "load"]
