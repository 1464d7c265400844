"""Registries: what a config chooses by name (pretraining methods, 3D backbones, image encoders, optimizers).

A registry maps names to constructors. A name is written once, where its entry is defined::

    from slidr.models import IMAGE_ENCODERS

    @IMAGE_ENCODERS.register("resnet50", options=("dilated",))
    def resnet50(dilated: bool = False) -> ResNet: ...

and everything else asks the registry: the config's allowed values (a field typed
``Annotated[str, RegistryName("image_encoder")]``), the error for an unknown name (the valid names and the
closest one), the command-line help (``{names:image_encoder}`` in a help text shown with
:class:`RegistryHelpFormatter`) and the builders (``IMAGE_ENCODERS.build(name, ...)``).

Layers. A registry object is created in the layer that owns its entries (``slidr.models.BACKBONES``,
``slidr.methods.METHODS``, ...), so the modules defining entries import it without going up a layer. The config
layer, below all of them, finds a registry by its *kind* through :data:`OWNERS` (kind -> the module creating it)
and imports that module only when a name is first checked. The entries of a registry are registered by the
modules of its *home*: module names, or package names whose every public submodule (not starting with ``_``) is
imported on the first lookup. So an entry added in a home package is one new module and nothing else; such
modules must import cheaply (optional dependencies inside the constructors, not at module level).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import pkgutil
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, Iterator, Mapping, Optional, Sequence, TypeVar

from slidr.errors import ConfigError, SlidrError

T = TypeVar("T")

#: kind -> module that creates the registry of that kind (imported on the first lookup by kind)
OWNERS: dict[str, str] = {
    "method": "slidr.methods",
    "backbone": "slidr.models",
    "image_encoder": "slidr.models",
    "optimizer": "slidr.engine.optim",
}

_REGISTRIES: dict[str, "Registry[Any]"] = {}


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered constructor: its ``name``, the object, and optional metadata given at registration."""

    name: str
    obj: T
    metadata: Mapping[str, Any]


class Registry(Generic[T]):
    """Names -> constructors of one kind, filled by the modules of ``home`` on the first lookup.

    Parameters
    ----------
    kind : str
        What the entries are, e.g. ``"method"``; unique (a second registry of a kind is an error) and the key of
        :func:`registry` (add it to :data:`OWNERS` so that configs can check names before the owner is imported).
    home : str or sequence of str
        Modules whose import registers the entries; a package stands for all of its public submodules.
    """

    def __init__(self, kind: str, home: str | Sequence[str] = ()) -> None:
        if kind in _REGISTRIES:
            raise SlidrError(f"a registry of kind {kind!r} exists already")
        self.kind = kind
        self.home: tuple[str, ...] = (home,) if isinstance(home, str) else tuple(home)
        self._entries: dict[str, Entry[T]] = {}
        self._home_loaded = False
        self._loading = False
        _REGISTRIES[kind] = self

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"

    # ---- registering -----------------------------------------------------------------------------------------
    def register(self, name: Optional[str] = None, obj: Optional[T] = None, **metadata: Any) -> Any:
        """Register ``obj`` under ``name`` (default: its ``__name__``); usable as a decorator.

        ``@REG.register()`` / ``@REG.register("name", key=value)`` return the decorated object unchanged;
        ``REG.register("name", obj)`` registers directly. ``metadata`` is kept with the entry (:meth:`entry`).

        Raises
        ------
        SlidrError
            The name is registered already (two entries may not share a name).
        """

        def add(target: T) -> T:
            key = name or getattr(target, "__name__", None)
            if not key or not isinstance(key, str):
                raise SlidrError(f"{self.kind}: an entry needs a name (register(name=...))")
            if key in self._entries:
                raise SlidrError(f"{self.kind} {key!r} is registered twice: by {_origin(self._entries[key].obj)} "
                                 f"and by {_origin(target)}")
            self._entries[key] = Entry(key, target, MappingProxyType(dict(metadata)))
            return target

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> Entry[T]:
        """Remove and return an entry (tests that register temporary entries clean up with it)."""
        return self._entries.pop(name)

    # ---- looking up -------------------------------------------------------------------------------------------
    def entry(self, name: str, where: Optional[str] = None) -> Entry[T]:
        """The entry ``name``.

        Raises
        ------
        ConfigError
            Unknown name: the message starts with ``where`` (default: the kind), lists the registered names and
            the closest one.
        """
        if name not in self._entries:
            self._load_home()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(self.unknown_message(name, where)) from None

    def get(self, name: str, where: Optional[str] = None) -> T:
        """The object registered as ``name`` (unknown name: :class:`ConfigError`, see :meth:`entry`)."""
        return self.entry(name, where).obj

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the constructor registered as ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> tuple[str, ...]:
        """Every registered name, sorted."""
        self._load_home()
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self._load_home()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def unknown_message(self, name: object, where: Optional[str] = None) -> str:
        """``"<where>: 'x' is not one of 'a', 'b' (did you mean 'a'?)"`` (``where`` defaults to the kind)."""
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        listed = ", ".join(map(repr, names)) if names else f"(no {self.kind} is registered)"
        return f"{where or self.kind}: {name!r} is not one of {listed}{hint}"

    def _load_home(self) -> None:
        if self._home_loaded or self._loading:
            return
        self._loading = True  # a home module that looks names up while it is imported must not recurse
        try:
            for module_name in self.home:
                module = importlib.import_module(module_name)
                for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
                    if not info.name.startswith("_"):
                        importlib.import_module(f"{module_name}.{info.name}")
            self._home_loaded = True
        finally:
            self._loading = False


def _origin(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def registry(kind: str) -> Registry[Any]:
    """The registry of ``kind``, importing the module that creates it (:data:`OWNERS`) if needed."""
    if kind not in _REGISTRIES and kind in OWNERS:
        importlib.import_module(OWNERS[kind])
    try:
        return _REGISTRIES[kind]
    except KeyError:
        raise SlidrError(f"no registry of kind {kind!r}; kinds: {', '.join(sorted(set(OWNERS) | set(_REGISTRIES)))}"
                         ) from None


@dataclass(frozen=True)
class RegistryName:
    """Marks a config field whose value names an entry of the registry of ``kind``.

    ``name: Annotated[str, RegistryName("backbone")] = "minkunet34"``: :func:`slidr.config.from_dict` calls
    :meth:`check`, so a config only loads with a registered name.
    """

    kind: str

    def check(self, value: Any, where: str) -> Any:
        """``value`` if it is registered; otherwise :class:`ConfigError` naming ``where`` and the valid names."""
        found = registry(self.kind)
        if not isinstance(value, str) or value not in found:
            raise ConfigError(found.unknown_message(value, where))
        return value


_NAMES = re.compile(r"\{names:(\w+)\}")


def expand_names(text: str) -> str:
    """Replace each ``{names:KIND}`` of ``text`` by the registered names of that kind, comma-separated."""
    return _NAMES.sub(lambda match: ", ".join(registry(match.group(1)).names()), text)


class RegistryHelpFormatter(argparse.HelpFormatter):
    """Help formatter expanding ``{names:KIND}`` in help texts when help is shown (registries load only then)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        text = super()._get_help_string(action)
        return expand_names(text) if text else text

    def _format_text(self, text: str) -> str:
        return super()._format_text(expand_names(text))

