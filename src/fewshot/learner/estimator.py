"""The scikit-learn estimator: :class:`FewShotClassifier` and :func:`load`."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError as SklearnNotFitted
from sklearn.utils.multiclass import type_of_target

from ..calibration import calibrate
from ..config import TrainConfig
from ..errors import CheckpointError, ConfigError, DataError
from ..io import load_tensors
from ..methods.base import Method
from ..progress import bar as progress_bar, status
from ..runs import Run
from ..runs.exported import Exported, read_model, write_model
from ..runtime import resolve_runtime
from ..taskkind import task_kind
from .engines import (LEARNER_KEY, FeatureEngine, MethodEngine, build_feature_head, hub_backbone, learner_record)
from .labels import check_labels, json_labels, label_array, ordered

#: Episodes a run without a stored temperature is calibrated on when loaded.
CALIBRATION_EPISODES = 50
#: The head of a Hugging Face backbone when none is named (see :class:`FewShotClassifier`).
DEFAULT_HUB_HEAD = "logistic"
#: Seconds a step runs before its progress is shown (``verbose=1``).
QUIET_SECONDS = 2.0

# One in-memory feature cache per process (``cache="memory"``): clones of an estimator
# (cross-validation folds) embed each image once between them.
_SHARED_CACHE: Any = None


class NotFittedError(ConfigError, SklearnNotFitted):
    """Predicting before ``fit``: scikit-learn's NotFittedError and fewshot's ConfigError."""


class LabelError(DataError, ValueError):
    """Labels a classifier cannot fit on (one class, continuous values): a DataError, and the
    ValueError scikit-learn's tools expect."""


class _Progress:
    """Progress of embedding, shown (through :mod:`fewshot.progress`: a bar on a terminal,
    plain lines elsewhere) only once the step has run longer than :data:`QUIET_SECONDS`."""

    def __init__(self, what: str, on: bool):
        self.what, self.on, self.start, self.bar = what, on, time.monotonic(), None

    def __call__(self, done: int, total: int) -> None:
        if self.on and self.bar is None and time.monotonic() - self.start > QUIET_SECONDS:
            self.bar = progress_bar(total, desc=self.what, unit="img")
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class FewShotClassifier(ClassifierMixin, BaseEstimator):
    """A few-shot image classifier: ``fit`` on a few labelled images per class, predict the rest.

    A scikit-learn estimator: the constructor only stores its hyper-parameters (nothing is
    loaded before ``fit``), so ``get_params``/``set_params``, ``clone``, pipelines,
    ``cross_val_score`` and ``GridSearchCV`` work; a fitted one pickles (joblib) for
    scikit-learn users (fewshot itself never reads a pickle: ship a model with :meth:`save`).

    Parameters
    ----------
    model : a run folder, an exported model (file or folder), or ``"hf:<folder or hub id>"``
        (a Hugging Face vision backbone, :func:`fewshot.models.hub.load_backbone`).
    head : a feature head of :mod:`fewshot.heads` (``simpleshot``, ``logistic``, ``bdcspn``,
        ``tim``, ``ptmap``, ``laplacianshot``, ``transductive_finetune``) on the backbone's
        frozen features, or None: a run's own method adapts as it was meta-trained, a
        Hugging Face backbone gets ``logistic`` (a linear probe: the standard evaluation of
        frozen pre-trained features, Tian et al. 2020, arXiv:2003.11539; the issue's own
        measurement had it at 81 % where meta-trained ProtoNet got 63 %).
    head_options : the head's options (dict).
    strategy, strategy_options : adapt with a transfer strategy of
        :mod:`fewshot.methods.transfer` (``"lp-ft"``, ``"finetune"``, ...) instead of a head:
        LP-FT and fine-tuning, on a run's backbone or a Hugging Face one.
    which : a run's ``"best"`` or ``"last"`` weights.
    backbone : your ``nn.Module``, for a run trained with your own backbone.
    device, precision : where and how to compute (:func:`fewshot.runtime.resolve_runtime`):
        ``"auto"``/``"cpu"``/``"cuda"``..., ``"fp32"``/``"bf16"``/``"fp16"``.
    batch_size : images embedded at once.
    cache : ``"memory"`` (one feature cache per process, shared by clones), ``"disk"``
        (also ``$FEWSHOT_CACHE/features``) or None.
    calibration_episodes, data_root : how a run without a stored temperature is calibrated.
    verbose : 1 prints progress lines (stderr) for embedding that takes longer than 2 s.

    Inputs ``X`` are images: a list of file paths, PIL images or arrays, or an array of
    images ``(n, h, w[, c])``; labels any hashable values. A *transductive* head predicts
    each call's queries together (they move each other's predictions): give ``predict``
    the whole query batch at once. The MAML family likewise normalises each batch of
    queries with its own statistics (the transductive setting of its papers).

    Fitted: ``classes_`` (labels in :meth:`predict_proba`'s column order), ``support_``
    (the support set as fitted on: features for a head, prepared images for a method) and
    ``support_labels_``. :meth:`save` keeps them, so a saved fitted model predicts without
    the support images (:func:`load` restores them).

    scikit-learn's estimator checks that cannot apply to an image classifier are listed,
    with why, in ``tests/test_estimator.py`` (``EXPECTED_FAILED``) and the README.
    """

    def __init__(self, model: str | Path | None = None, head: str | None = None, head_options: dict | None = None,
                 strategy: str | None = None, strategy_options: dict | None = None, which: str = "best",
                 backbone: torch.nn.Module | None = None, device: str | None = None, precision: str | None = None,
                 batch_size: int = 64, cache: str | None = "memory",
                 calibration_episodes: int = CALIBRATION_EPISODES, data_root: str | Path | None = None,
                 verbose: int = 0):
        self.model, self.head, self.head_options = model, head, head_options
        self.strategy, self.strategy_options, self.which, self.backbone = strategy, strategy_options, which, backbone
        self.device, self.precision, self.batch_size, self.cache = device, precision, batch_size, cache
        self.calibration_episodes, self.data_root, self.verbose = calibration_episodes, data_root, verbose

    # -- scikit-learn ------------------------------------------------------------------

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = True  # fine-tuning strategies and some heads draw random numbers
        tags.input_tags.two_d_array = False  # X is images, not a table of numbers
        tags.input_tags.three_d_array = True  # an array of images (n, h, w[, c])
        tags.input_tags.string = True  # image file paths
        tags.classifier_tags.poor_score = True
        return tags

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_predictor", None)  # a closure; refitted from support_ when needed
        return state

    # -- loading -----------------------------------------------------------------------

    _RELOAD = ("model", "head", "head_options", "strategy", "strategy_options", "which", "backbone", "device",
               "precision", "calibration_episodes", "data_root")

    def _ready_engine(self) -> MethodEngine | FeatureEngine:
        """The engine of the current parameters: loaded once, again only when a parameter changed."""
        wanted = {k: getattr(self, k) for k in self._RELOAD}
        if getattr(self, "_loaded_with", None) != wanted:
            self._engine, self._saved_fit = _build(**wanted)
            self._loaded_with = wanted
        return self._engine

    def _runtime(self):
        return resolve_runtime(self.device, self.precision)

    def _inputs(self, engine, X: Any, what: str) -> torch.Tensor:
        global _SHARED_CACHE
        if self.cache not in ("memory", "disk", None):
            raise ConfigError(f"cache must be 'memory', 'disk' or None, got {self.cache!r}")
        cache = None
        if self.cache is not None:
            from ..features import FeatureCache

            if self.cache == "disk":
                cache = FeatureCache.from_env()
            else:
                _SHARED_CACHE = _SHARED_CACHE if _SHARED_CACHE is not None else FeatureCache()
                cache = _SHARED_CACHE
        progress = _Progress(f"embedding {what}", bool(self.verbose))
        try:
            with self._runtime().autocast():
                return engine.prepare(X, what, cache=cache, batch_size=self.batch_size, progress=progress)
        finally:
            progress.close()

    # -- fitting and predicting --------------------------------------------------------

    def fit(self, X: Any, y: Sequence[Hashable]) -> "FewShotClassifier":
        """Adapt to a support set: images ``X`` and one hashable label per image. Returns self."""
        engine = self._ready_engine()
        support = self._inputs(engine, X, "support images")
        labels = check_labels(y, len(support))
        classes = ordered(labels)
        if len(classes) < 2:
            raise LabelError(f"support labels: a few-shot task needs at least 2 classes, got 1 class "
                             f"({classes[0]!r})")
        if all(isinstance(c, float) for c in classes) and type_of_target(np.asarray(classes)) == "continuous":
            raise LabelError("support labels: Unknown label type: continuous values (a classifier needs class "
                             "labels, not measurements); give names or whole numbers")
        index = {c: i for i, c in enumerate(classes)}
        self.support_labels_ = torch.tensor([index[label] for label in labels], dtype=torch.int64)
        self.support_ = support
        self.classes_ = label_array(classes)
        self._predictor = None
        if not engine.transductive:
            self._fitted_predictor(engine)  # fit the head now: its errors belong to fit
        return self

    def _fitted_predictor(self, engine):
        if getattr(self, "_predictor", None) is None:
            with self._runtime().autocast():
                self._predictor = engine.adapt(self.support_, self.support_labels_, len(self.classes_))
        return self._predictor

    def _logits(self, X: Any) -> torch.Tensor:
        if getattr(self, "classes_", None) is None:
            raise NotFittedError("this FewShotClassifier is not fitted: call fit(support_images, support_labels) "
                                 "before predicting")
        engine = self._engine
        queries = self._inputs(engine, X, "query images")
        with self._runtime().autocast():
            if engine.transductive:  # the whole query batch at once
                predictor = engine.adapt(self.support_, self.support_labels_, len(self.classes_), queries)
                return predictor(queries).float()
            return self._fitted_predictor(engine)(queries).float()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, len(classes_))``, columns in ``classes_`` order (calibrated when the
        model has a fitted temperature, see :attr:`calibration`)."""
        return torch.softmax(self._logits(X).double() / self.temperature, 1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable label of each image."""
        best = self._logits(X).argmax(1).numpy()
        return self.classes_[best]

    def score(self, X: Any, y: Sequence[Hashable], sample_weight: Any = None) -> float:
        """Accuracy (fraction correct, weighted by ``sample_weight``) on images ``X`` with true labels ``y``."""
        predicted = self.predict(X)
        labels = check_labels(y, len(predicted))
        correct = np.array([p == t for p, t in zip(predicted.tolist(), labels)], dtype=float)
        return float(np.average(correct, weights=sample_weight))

    # -- what it is --------------------------------------------------------------------

    @property
    def calibration(self) -> dict:
        """How :attr:`temperature` was fitted (or why it was not)."""
        return self._ready_engine().calibration

    @calibration.setter
    def calibration(self, value: dict) -> None:
        """Set the temperature record (e.g. one fitted elsewhere); it is saved with the model."""
        if not (isinstance(value, dict) and isinstance(value.get("temperature"), (int, float))
                and value["temperature"] > 0):
            raise ConfigError(f"calibration must be a dict with a positive 'temperature', got {value!r}")
        self._ready_engine().calibration = value

    @property
    def temperature(self) -> float:
        return float(self.calibration["temperature"])

    @property
    def method(self) -> Method | None:
        """The trained method (None for a Hugging Face backbone with a head)."""
        return self._ready_engine().method

    @property
    def preprocessing(self):
        """What input images become before the network sees them."""
        return self._ready_engine().preprocessing

    @property
    def config(self) -> TrainConfig | None:
        return self._ready_engine().config

    @property
    def source(self) -> dict:
        """Where the weights came from (a run's data and steps, a Hugging Face model's name)."""
        return self._ready_engine().source

    @property
    def description_name(self) -> str:
        """What it is, in a few words (``protonet``, ``hf:... + head logistic``)."""
        return self._ready_engine().name

    # -- shipping ----------------------------------------------------------------------

    def save(self, path: str | Path, *, card: str | None = None) -> Path:
        """Export to ``path`` (``.safetensors`` file, else a folder): see :mod:`fewshot.runs.exported`.
        Fitted, it keeps the classes and the support set as fitted on (features for a head), so the
        loaded model predicts without the support images. An existing ``path`` that is not an
        export of the same form is refused, untouched. ``card``: a model card, the folder's
        ``README.md`` (``fewshot export --format hf``)."""
        engine = self._engine if getattr(self, "classes_", None) is not None else self._ready_engine()
        description, extra = self.description(), {}
        if description[LEARNER_KEY]["fitted"] is not None:
            extra = {"fitted.support": self.support_, "fitted.labels": self.support_labels_}
        return write_model(path, description, engine.weights(), extra, card=card)

    def description(self) -> dict[str, Any]:
        """What an exported model records beside its weights."""
        engine = self._engine if getattr(self, "classes_", None) is not None else self._ready_engine()
        fitted = None
        if getattr(self, "classes_", None) is not None:
            fitted = {"classes": json_labels(self.classes_), "inputs": engine.inputs, "count": len(self.support_),
                      "tensors": {"support": "fitted.support", "labels": "fitted.labels"}}
        return {**engine.description(), LEARNER_KEY: learner_record(engine, fitted)}


def load(path: str | Path, *, head: str | None = None, head_options: dict | None = None, which: str = "best",
         backbone: torch.nn.Module | None = None, strategy: str | None = None, device: str | None = None,
         precision: str | None = None, calibration_episodes: int = CALIBRATION_EPISODES, data_root=None,
         cache: str | None = "memory", verbose: int = 0, batch_size: int = 64,
         **strategy_options: Any) -> FewShotClassifier:
    """A :class:`FewShotClassifier` from a run folder, an exported model or ``"hf:<folder or id>"``,
    loaded now (so a wrong path fails here). A saved *fitted* model comes back fitted: it
    predicts without its support images. ``head``: a feature head on the backbone's features
    (default for ``hf:``: ``logistic``; for a run: its method's own adaptation; for a saved
    model: the head it was saved with). ``strategy`` (e.g. ``"lp-ft"``, options as keywords):
    a transfer strategy instead."""
    learner = FewShotClassifier(model=path, head=head, head_options=head_options, strategy=strategy,
                                strategy_options=strategy_options or None, which=which, backbone=backbone,
                                device=device, precision=precision, batch_size=batch_size, cache=cache,
                                calibration_episodes=calibration_episodes, data_root=data_root, verbose=verbose)
    learner._ready_engine()
    saved = learner._saved_fit
    if saved is not None:
        learner.support_, learner.support_labels_ = saved["support"], saved["labels"]
        learner.classes_ = label_array(saved["classes"])
        learner._predictor = None
    return learner


# -- building an engine from the parameters --------------------------------------------------------


def _build(model, head, head_options, strategy, strategy_options, which, backbone, device, precision,
           calibration_episodes, data_root) -> tuple[MethodEngine | FeatureEngine, dict | None]:
    """The engine the parameters describe, and a saved model's fitted support set (or None)."""
    from ..models.hub import is_hub_name

    if model is None:
        raise ConfigError("FewShotClassifier needs model=: a run folder, an exported model or 'hf:<folder or id>'")
    if head is not None and strategy is not None:
        raise ConfigError(f"give a head ({head}) or a transfer strategy ({strategy}), not both")
    runtime = resolve_runtime(device, precision)
    options = dict(strategy_options or {})
    if is_hub_name(model):
        return _hub_engine(str(model), head, head_options, strategy, options, runtime.device), None
    opened = Run.open(model)
    record, saved = None, None
    if isinstance(opened, Exported):
        description, weights, weights_file = read_model(opened.path)
        record = description.get(LEARNER_KEY)
        if record is not None and not isinstance(record, dict):
            raise CheckpointError(f"{model}: its '{LEARNER_KEY}' entry is not an object; export it again")
        if record and record.get("fitted") is not None:
            saved = _saved_fit(record["fitted"], weights_file, model)
        if record and record.get("backbone") is not None:
            net, prep = hub_backbone(record["backbone"], weights, str(model))
            hub = {"name": record["backbone"].get("name") or str(model), "source": description.get("source") or {}}
            chosen = _saved_head(record, head, head_options, strategy)
            if strategy is not None:
                return _strategy_engine(net, prep, strategy, options, runtime.device, hub["name"]), None
            engine = FeatureEngine(net, prep, build_feature_head(*chosen), runtime.device, hub=hub)
            return engine, _matching(saved, engine)
    base_engine = _run_engine(opened, model, which, backbone, strategy, options, calibration_episodes, data_root,
                              runtime.device)
    chosen = _saved_head(record or {}, head, head_options, strategy)
    if chosen is None:
        return base_engine, _matching(saved, base_engine)
    if base_engine.method.backbone is None:
        raise ConfigError(f"{model} holds a '{base_engine.method.name}' model, which has no backbone for a head")
    engine = FeatureEngine(base_engine.method.backbone, base_engine.preprocessing, build_feature_head(*chosen),
                           runtime.device, base=base_engine)
    return engine, _matching(saved, engine)


def _saved_head(record: dict, head, head_options, strategy) -> tuple[str, dict | None] | None:
    """The head asked for, else (no strategy asked either) the one the model was saved with."""
    if head is not None:
        return head, head_options
    saved = record.get("head")
    if strategy is None and isinstance(saved, dict) and isinstance(saved.get("name"), str):
        return saved["name"], saved.get("options") if head_options is None else head_options
    if head_options:
        raise ConfigError("head_options were given without a head: name the head too")
    return None


def _matching(saved: dict | None, engine) -> dict | None:
    """A saved support set, if it is what ``engine`` fits on (features for a head, images for a method)."""
    return saved if saved is not None and saved["inputs"] == engine.inputs else None


def _saved_fit(fitted: Any, weights_file: Path, model) -> dict:
    label = f"{model}: its saved fit"
    if not (isinstance(fitted, dict) and isinstance(fitted.get("classes"), list) and len(fitted["classes"]) >= 2
            and fitted.get("inputs") in ("features", "images")):
        raise CheckpointError(f"{label} is not {{classes: [at least 2], inputs: features|images, ...}}; export again")
    tensors = load_tensors(weights_file)
    support, labels = tensors.get("fitted.support"), tensors.get("fitted.labels")
    classes = fitted["classes"]
    if support is None or labels is None or labels.dtype != torch.int64 or labels.shape != (len(support),):
        raise CheckpointError(f"{label}: fitted.support and fitted.labels are missing or do not match; export again")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
        raise CheckpointError(f"{label}: fitted.labels index classes outside the {len(classes)} saved ones")
    if not support.is_floating_point() or not torch.isfinite(support).all():
        raise CheckpointError(f"{label}: fitted.support is not finite floating values; export again")
    return {"classes": classes, "inputs": fitted["inputs"], "support": support, "labels": labels}


def _hub_engine(name, head, head_options, strategy, options, device):
    from ..models.hub import load_backbone

    hub = load_backbone(name)
    if strategy is not None:
        return _strategy_engine(hub.backbone, hub.preprocessing, strategy, options, device, name)
    record = {"name": name, "source": hub.metadata.get("source") or {}}
    head_obj = build_feature_head(head or DEFAULT_HUB_HEAD, head_options)
    return FeatureEngine(hub.backbone, hub.preprocessing, head_obj, device, hub=record)


def _strategy_engine(backbone, prep, strategy, options, device, name):
    from ..methods.transfer import wrap

    method = wrap(backbone, strategy, **options)
    return MethodEngine(method, prep, device, strategy={"name": strategy, "options": options},
                        calibration={"temperature": 1.0, "fitted": False,
                                     "why": f"{strategy} on {name}: no data to fit a temperature on"})


def _run_engine(opened, path, which, backbone, strategy, options, episodes, data_root, device) -> MethodEngine:
    loaded = opened.load(which, backbone=backbone)
    config, base, prep = loaded.config, loaded.method, loaded.preprocessing
    calibration, source, saved = loaded.calibration, loaded.source, loaded.strategy
    if saved and strategy is None:  # the exported learner's own strategy, unless another is asked for
        strategy, options = saved.get("name"), dict(saved.get("options") or {})
    method, chosen = base, None
    if strategy is not None:
        from ..methods.transfer import wrap

        method = wrap(base, strategy, **options)
        chosen = {"name": strategy, "options": options}
        if not (calibration and calibration.get("strategy") == chosen):
            calibration = None  # the run's temperature is for its own logits, not the strategy's
    if not task_kind(method).logits:
        raise ConfigError(f"{path} holds a {method.task} model; fewshot.load gives classifiers")
    if not calibration:
        calibration = _calibrate_on_run_data(method, config, episodes, data_root, chosen)
    return MethodEngine(method, prep, device, base=base, config=config, calibration=calibration, source=source,
                        strategy=chosen)


def _calibrate_on_run_data(method: Method, config: TrainConfig, episodes: int, data_root, strategy) -> dict:
    """Fit T on the training data's validation (else training) split; T = 1 when that cannot be done."""
    from ..calibration import calibration_sampler
    from ..data import load_dataset

    if episodes < 1:
        return {"temperature": 1.0, "fitted": False, "why": "calibration_episodes=0", "strategy": strategy}
    status(f"calibrating probabilities on {episodes} episodes of {config.dataset}")
    try:
        data = load_dataset(config.dataset, data_root, **config.dataset_options)
        sampler, split = calibration_sampler(data, config)
    except (ConfigError, DataError) as e:
        warnings.warn(f"probabilities are not calibrated (temperature 1): the training data cannot be "
                      f"loaded to fit one ({e})", stacklevel=4)
        return {"temperature": 1.0, "fitted": False, "why": str(e), "strategy": strategy}
    return {**calibrate(method, sampler, episodes, split), "strategy": strategy}


__all__ = ["CALIBRATION_EPISODES", "DEFAULT_HUB_HEAD", "FewShotClassifier", "LabelError", "NotFittedError", "load"]
