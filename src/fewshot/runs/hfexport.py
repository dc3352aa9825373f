"""``fewshot export --format hf``: an exported model folder Hugging Face tools load.

The folder is fewshot's own exported model folder (``config.json``, the description;
``model.safetensors``, the weights as ``model.*``) plus a model card, ``README.md``:
training data, method, protocol and accuracy, calibration. :class:`FewShotHubModel` is
a :class:`huggingface_hub.PyTorchModelHubMixin` module whose ``from_pretrained`` reads
such a folder (locally, or from the Hub once pushed): the mixin passes the description's
fields to ``__init__``, which checks them (:mod:`fewshot.runs.schema`) and builds the
method by name from fewshot's registries, and loads the weights strictly. Nothing read
names code to run. ``fewshot.load`` and ``fewshot zoo add`` read the same folder.
"""

from __future__ import annotations

from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..config import TrainConfig
from .model import build_model, preprocessing_from
from .schema import check_description


class FewShotHubModel(nn.Module, PyTorchModelHubMixin, library_name="fewshot", tags=["few-shot"]):
    """A fewshot exported model as a Hugging Face Hub module.

    ``model``: the method (a :class:`~fewshot.methods.Method`); ``description``: the
    export's description; ``forward(support, labels, queries)`` gives the calibrated
    logits (``logits / temperature``) of ``queries`` against the support's classes.
    """

    def __init__(self, config: dict, **description: Any):
        super().__init__()
        described = check_description({"config": config, **description}, "config.json")
        self.description = described
        self.preprocessing = preprocessing_from(described.get("preprocessing"), described.get("image_shape"))
        self.model = build_model(TrainConfig.from_dict(config), self.preprocessing.image_shape)
        self.temperature = float((described.get("calibration") or {}).get("temperature", 1.0))

    @classmethod
    def _from_pretrained(cls, *, strict: bool = True, **options: Any) -> "FewShotHubModel":
        # Strictly: a weight missing from the file would leave its random initialisation.
        return super()._from_pretrained(strict=True, **options)

    def forward(self, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        way = int(labels.max()) + 1
        return self.model.adapt(support, labels, way)(queries) / self.temperature


def model_card(description: dict[str, Any], state: dict | None = None) -> str:
    """The ``README.md`` of a Hugging Face export: what the model was trained on and how,
    its validation accuracy under its own protocol (from the run's ``state``, when
    exported from a run folder) and its calibration."""
    config = description.get("config") or {}
    calibration = description.get("calibration") or {}
    shape = "x".join(map(str, description.get("image_shape") or [])) or "?"
    way, shot, query = config.get("way"), config.get("shot"), config.get("query")
    best = (state or {}).get("best") or {}
    accuracy = best.get("accuracy")
    score = (f"{100 * accuracy:.1f} %" + (f" ± {100 * best['ci95']:.1f}" if best.get("ci95") else "")
             + f" on the validation split ({config.get('val_split')}), best of training at step {best.get('step')}"
             if isinstance(accuracy, (int, float)) else "not recorded (evaluate with `fewshot evaluate`)")
    if calibration.get("fitted"):
        calibrated = (f"temperature {calibration.get('temperature'):.4g}, fitted on {calibration.get('episodes')} "
                      f"{calibration.get('split')} episodes (temperature scaling, Guo et al. 2017, "
                      f"arXiv:1706.04599); ECE {calibration.get('ece_before', float('nan')):.3f} -> "
                      f"{calibration.get('ece_after', float('nan')):.3f}")
    else:
        calibrated = f"not fitted (temperature 1){': ' + str(calibration['why']) if calibration.get('why') else ''}"
    options = ", ".join(f"{k}={v}" for k, v in sorted((config.get("dataset_options") or {}).items()))
    return "\n".join([
        "---", "library_name: fewshot", "tags:", "- few-shot", f"- {config.get('method')}", "---", "",
        f"# {config.get('method')} on {config.get('dataset')}", "",
        "A few-shot classifier exported by fewshot (`fewshot export --format hf`).", "",
        f"- **Training data**: {config.get('dataset')}" + (f" ({options})" if options else "")
        + f", split `{config.get('train_split')}`",
        f"- **Method**: {config.get('method')} with backbone {config.get('backbone')}"
        + (f" ({config.get('backbone_options')})" if config.get("backbone_options") else "")
        + f", {config.get('episodes')} training episodes, seed {config.get('seed')}",
        f"- **Inputs**: {shape} (channels x height x width)",
        f"- **Protocol**: {way}-way {shot}-shot, {query} queries per class",
        f"- **Accuracy**: {score}",
        f"- **Calibration**: {calibrated}", "",
        "## Use", "",
        "```python", "import fewshot", "learner = fewshot.load(\"PATH\").fit(support_images, support_labels)",
        "learner.predict(query_images)", "", "from fewshot.runs.hfexport import FewShotHubModel",
        "model = FewShotHubModel.from_pretrained(\"PATH\")  # the method as a torch module", "```", "",
    ])


__all__ = ["FewShotHubModel", "model_card"]
