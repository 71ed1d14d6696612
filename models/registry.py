"""Registry of FFW module classes, keyed by family name (torchtitan style).

Each ``models/ffw/<family>.py`` registers its module class under the family
key of its config (``DenseFFWConfig.family == "dense"`` and so on), and the
family's configs are registered the same way (``models.ffw.config_base.FFW_FAMILIES``)::

    @FFW_MODULES.register("dense")
    class DenseFFW(FFWLayer): ...

Registering a name twice raises; looking up an unknown name raises and lists
the valid names. Torch-free itself: it stores classes, it does not import them.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

RegisteredClass = TypeVar("RegisteredClass")


class Registry(Generic[RegisteredClass]):
    """A name -> class mapping that refuses duplicates and explains misses."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, RegisteredClass] = {}

    def register(self, name: str) -> Callable[[RegisteredClass], RegisteredClass]:
        """Class decorator registering the class under ``name``."""

        def add(registered: RegisteredClass) -> RegisteredClass:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"(by {self._classes[name]!r}); pick a new name")
            self._classes[name] = registered
            return registered

        return add

    def get(self, name: str) -> RegisteredClass:
        """The class registered under ``name``; raises ``KeyError`` listing valid names."""
        if name not in self._classes:
            raise KeyError(f"{self.kind} {name!r} is not registered; "
                           f"valid names: {', '.join(sorted(self._classes)) or '(none)'}")
        return self._classes[name]

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes


FFW_MODULES: Registry = Registry("FFW module")
"""Family key -> ``FFWLayer`` subclass. Filled by importing ``models.ffw.<family>``,
which ``models.builder`` does on first use of a family (the module each family's
config names with :func:`models.ffw.config_base.ffw_family`)."""
