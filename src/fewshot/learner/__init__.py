"""Your own task: a trained model or a pre-trained backbone as a scikit-learn classifier.

::

    import fewshot
    learner = fewshot.load("hf:path/to/resnet", head="logistic")  # a Hugging Face backbone + a linear probe
    learner = fewshot.load("runs/proto")                 # or a run folder or an exported model
    learner.fit(support_images, ["cat", "dog", "cat"])    # a few labelled images per class
    learner.predict(query_images)                         # -> array of those labels
    learner.predict_proba(query_images)                   # -> (n, classes), columns in classes_ order
    learner.save("model.safetensors")                     # ship it, fitted: fewshot.load reads it back
                                                          # and predicts without the support images

:class:`FewShotClassifier` is a scikit-learn estimator (``clone``, ``cross_val_score``,
pipelines, joblib); :func:`load` builds one and loads its model at once. ``fit`` takes any
hashable labels and returns the learner; ``classes_`` holds them (sorted when they can be).
Images are file paths, PIL images, NumPy arrays or torch tensors in the layouts
:mod:`fewshot.images` lists, prepared as the model's training data was (a run's size,
channels and value range; a Hugging Face model's own processor).

Two ways to learn from the support set (:mod:`.engines`):

* a run's own method, adapting as it was meta-trained (or with a transfer strategy such as
  LP-FT). The right train/eval mode is the method's own (``Method.test_mode``): metric
  learners predict in eval mode; the MAML family predicts in train mode on a copy,
  normalising each batch of queries with its own statistics (the transductive setting of
  its papers), so their predictions depend on which queries are predicted together;
* a feature head (:mod:`fewshot.heads`) on a backbone's frozen features: a Hugging Face
  backbone (``hf:``) or a run's. Each image is embedded once per feature cache. A
  transductive head (``bdcspn``, ``tim``, ``ptmap``, ``laplacianshot``,
  ``transductive_finetune``) predicts the queries of one ``predict`` call together.

Probabilities are ``softmax(logits / T)``. A run's temperature T is fitted to held-out
episodes (:mod:`fewshot.calibration`): by the trainer at the end of training, on the
validation split, and stored with the run. A run without one (trained before this
existed), or a transfer strategy (whose logits are not the run's), is calibrated when
loaded, on ``calibration_episodes`` episodes of the run's dataset; with 0 episodes, or a
dataset that cannot be loaded by name, T is 1 and ``calibration`` says so. A feature head
is not calibrated (T = 1, said in ``calibration``).
"""

from .engines import LEARNER_KEY
from .estimator import CALIBRATION_EPISODES, DEFAULT_HUB_HEAD, FewShotClassifier, NotFittedError, load

__all__ = ["CALIBRATION_EPISODES", "DEFAULT_HUB_HEAD", "FewShotClassifier", "LEARNER_KEY", "NotFittedError", "load"]
