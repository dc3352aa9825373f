"""Models you can ship: one trained method, its settings and preprocessing, in a file.

``fewshot.load(path).save(out)`` (``fewshot export RUN --out OUT``) writes either

* ``out`` ending in ``.safetensors``: one safetensors file whose header metadata
  holds the description (key ``fewshot``, a JSON string), or
* any other ``out``: a folder in the Hugging Face ``save_pretrained`` layout,
  ``config.json`` (the description) and ``model.safetensors`` (the weights).

The description holds the training config (method and its options, backbone and its
options), the input preprocessing (:class:`fewshot.images.Preprocessing`), the
probability calibration (:mod:`fewshot.calibration`) and where the weights came from.
:func:`fewshot.load` reads either form without the run folder. Nothing is pickled and
nothing read names code to run: the method and backbone are chosen from fewshot's own
registries by name, and a run of your own backbone needs that module passed again.

An existing ``out`` is replaced only when it is an export of the same form (a file, or
an empty folder or an exported model folder), never a file fewshot did not write; a
folder is written whole beside the old one and exchanged with it in one rename. The
format itself (reading, writing) lives with the other forms of a trained model, in
:mod:`fewshot.runs.exported`; this module is its public face.
"""

from __future__ import annotations

from .runs.exported import FORMAT, FORMAT_VERSION, is_model_file, read_model, write_model

__all__ = ["FORMAT", "FORMAT_VERSION", "is_model_file", "read_model", "write_model"]
