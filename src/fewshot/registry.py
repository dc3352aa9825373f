"""Named collections of the things a user picks by name: methods, backbones, datasets,
generated task families, transferability scores.

One :class:`Registry` type serves them all. Things register where they are defined,
as timm's ``@register_model`` does::

    @BACKBONES.register("conv4")
    class Conv4(nn.Sequential): ...

A name is taken once: registering a second, different object under it is refused,
so a plug-in cannot silently replace a built-in. An unknown name is a one-line
:class:`~fewshot.errors.ConfigError` with the closest known name and the list of all.

**Plug-ins.** An installed distribution adds things through the entry-point group
``fewshot.plugins``: each entry point names a module (importing it registers what it
defines) or a callable (called once, with no arguments). They are loaded once, the
first time any registry is listed or asked for a name it lacks. This is the one place
fewshot imports code it was not written with; what it imports is what the user
installed, never a name read from a file.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Generic, Iterator, TypeVar

from .errors import ConfigError, did_you_mean

GROUP = "fewshot.plugins"
T = TypeVar("T")

_plugins = "unloaded"  # -> "loading" -> "loaded"; "loading" stops a plug-in that looks names up from recursing


def load_plugins() -> None:
    """Load the ``fewshot.plugins`` entry points once (see the module docstring).

    One that fails is a :class:`~fewshot.errors.ConfigError` naming it, in one line; the
    next look-up tries again, so the error stays until the plug-in is fixed or removed.
    """
    global _plugins
    if _plugins != "unloaded":
        return
    _plugins = "loading"
    try:
        for point in entry_points(group=GROUP):
            try:
                loaded = point.load()
                if callable(loaded) and not isinstance(loaded, ModuleType):
                    loaded()
            except Exception as e:  # a plug-in's own error, whatever it is, becomes one line naming it
                where = f" (from {point.dist.name})" if getattr(point, "dist", None) else ""
                detail = " ".join(str(e).split())[:300]
                raise ConfigError(f"fewshot plug-in '{point.name} = {point.value}'{where} failed to load: "
                                  f"{type(e).__name__}: {detail}; fix or uninstall it") from None
        _plugins = "loaded"
    finally:
        if _plugins == "loading":
            _plugins = "unloaded"


class Registry(Generic[T]):
    """Objects by name, in the order they were registered (see the module docstring).

    ``kind`` names what it holds in messages ("method", "backbone"); ``hint`` ends the
    unknown-name message (e.g. "`fewshot methods` lists them").
    """

    def __init__(self, kind: str, hint: str = ""):
        self.kind, self.hint = kind, hint
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, replace: bool = False) -> Any:
        """Add ``obj`` under ``name`` and return it; without ``obj``, a decorator that does so.

        The same object again is a no-op; another object under a taken name is refused
        unless ``replace`` (for a user re-running their own registration)."""
        if obj is None:
            return lambda target: self.register(name, target, replace=replace)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} is registered under a non-empty name, got {name!r}")
        taken = self._entries.get(name)
        if taken is not None and taken is not obj and not replace:
            raise ConfigError(f"a {self.kind} named '{name}' is already registered "
                              f"({getattr(taken, '__qualname__', type(taken).__name__)}); choose another name")
        self._entries[name] = obj
        return obj

    def pop(self, name: str, default: Any = None) -> Any:
        """Remove ``name`` (tests, a user undoing their own registration)."""
        return self._entries.pop(name, default)

    def __getitem__(self, name: str) -> T:
        if name not in self:
            known = self.names()
            hint = f"; {self.hint}" if self.hint else ""
            raise ConfigError(f"unknown {self.kind} '{name}'{did_you_mean(name, known)}; choose one of: "
                              f"{', '.join(known) or 'none'}{hint}")
        return self._entries[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._entries[name] if name in self else default

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        load_plugins()
        return len(self._entries)

    def keys(self) -> list[str]:  # with __getitem__: dict(registry) and {**registry} work
        return list(self)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self)

    def items(self) -> list[tuple[str, T]]:
        load_plugins()
        return list(self._entries.items())

    def values(self) -> list[T]:
        return [obj for _, obj in self.items()]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


__all__ = ["GROUP", "Registry", "load_plugins"]
