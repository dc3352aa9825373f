"""The one exception family of fewshot.

Every error a user can cause is a :class:`FewShotError` whose message says what was
wrong and what to do about it. The command line prints that message alone and exits
with status 2.
"""


def did_you_mean(word: str, candidates, *, quote: str = "'") -> str:
    """`` (did you mean 'x'?)`` for the closest of ``candidates`` to ``word``, else "": the
    hint an error about an unknown name ends with."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {quote}{close[0]}{quote}?)" if close else ""


class FewShotError(Exception):
    """Base class of every error fewshot raises on purpose."""


class ConfigError(FewShotError, ValueError):
    """A setting, flag or argument is invalid."""


class DataError(FewShotError):
    """A dataset is missing, corrupt, or cannot give what was asked of it."""


class CheckpointError(FewShotError):
    """A run directory or checkpoint is missing, truncated or inconsistent."""


class TrainingError(FewShotError):
    """Training cannot go on (e.g. the loss diverged)."""


class StoreError(FewShotError):
    """The run store cannot be read or written (read-only, damaged, locked too long).

    Work that finished before recording failed is kept: the message says where it is
    and how to record it later.
    """
