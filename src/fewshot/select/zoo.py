"""The model zoo: its index (:mod:`.index`) and its training recipe (:mod:`.recipes`), in one place.

``from fewshot.select.zoo import Zoo, build_zoo`` keeps working; each job lives in its own
module: the index and its checks in :mod:`.index`, the presets and the build in
:mod:`.recipes`, the Omniglot alphabet groups in :mod:`.groups`.
"""

from .groups import BACKGROUND_GROUPS, EVALUATION_GROUPS, alphabet_splits
from .index import INDEX, Zoo, bn_mode, check_name
from .recipes import PRESETS, ZooSpec, build_model, build_zoo

__all__ = ["BACKGROUND_GROUPS", "EVALUATION_GROUPS", "INDEX", "PRESETS", "Zoo", "ZooSpec", "alphabet_splits",
           "bn_mode", "build_model", "build_zoo", "check_name"]
