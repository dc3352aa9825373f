"""Omniglot's alphabets grouped by script family: where zoo models train and where held-out tasks come from.

Models trained on one group and tasks drawn from another differ in domain, not only in
classes. Background alphabets train the zoo (:mod:`.recipes`); evaluation alphabets give
the held-out tasks (:mod:`.tasks`).
"""

from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError

BACKGROUND_GROUPS: dict[str, tuple[str, ...]] = {
    "bg-asian": ("Balinese", "Bengali", "Burmese_(Myanmar)", "Grantha", "Gujarati", "Sanskrit", "Tagalog",
                 "Japanese_(hiragana)", "Japanese_(katakana)", "Korean"),
    "bg-european": ("Latin", "Greek", "Cyrillic", "Armenian", "Asomtavruli_(Georgian)", "Mkhedruli_(Georgian)",
                    "Anglo-Saxon_Futhorc", "Hebrew", "Early_Aramaic", "Syriac_(Estrangelo)"),
    "bg-other": ("Arcadian", "Blackfoot_(Canadian_Aboriginal_Syllabics)", "Braille", "Futurama",
                 "Inuktitut_(Canadian_Aboriginal_Syllabics)", "Ojibwe_(Canadian_Aboriginal_Syllabics)", "N_Ko",
                 "Tifinagh", "Alphabet_of_the_Magi", "Malay_(Jawi_-_Arabic)"),
}
EVALUATION_GROUPS: dict[str, tuple[str, ...]] = {
    "eval-brahmic": ("Gurmukhi", "Kannada", "Malayalam", "Oriya", "Manipuri", "Sylheti", "Tibetan"),
    "eval-historic": ("Glagolitic", "Old_Church_Slavonic_(Cyrillic)", "Avesta", "Syriac_(Serto)", "Ge_ez",
                      "Mongolian"),
    "eval-invented": ("Angelic", "Atemayar_Qelisayer", "Atlantean", "Aurek-Besh", "Tengwar", "ULOG", "Keble"),
}


def alphabet_splits(dataset, groups: dict[str, Sequence[str]], upright_only: bool = False) -> dict[str, list[int]]:
    """``{group: class ids}`` of an Omniglot :class:`~fewshot.data.ClassDataset` for alphabet groups
    (class names are ``Alphabet/characterNN/rotDDD``); ``upright_only`` keeps the unrotated characters."""
    members = {alphabet: group for group, alphabets in groups.items() for alphabet in alphabets}
    out: dict[str, list[int]] = {group: [] for group in groups}
    for i, name in enumerate(dataset.class_names):
        parts = name.split("/")
        if parts[0] in members and (not upright_only or len(parts) < 3 or parts[2] == "rot000"):
            out[members[parts[0]]].append(i)
    empty = [g for g, ids in out.items() if not ids]
    if empty:
        raise ConfigError(f"{dataset.name} has no classes of alphabet group(s) {', '.join(empty)}; "
                          f"alphabet groups need Omniglot")
    return out


__all__ = ["BACKGROUND_GROUPS", "EVALUATION_GROUPS", "alphabet_splits"]
