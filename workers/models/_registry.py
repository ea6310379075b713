"""Name → factory registries for encoders and MIL heads, so a new model is one file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from slidemill.workers.errors import UnknownComponentError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named set of factories; `kind` appears in error messages ("encoder", "MIL head").

    Besides plain names, a registry may hold families: `register_family("timm")` makes every
    name "timm:<member>" build through one factory called as `factory(member, **kwargs)`, for
    model zoos too large (and too slow to import) to register name by name.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._families: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        if ":" in name:
            raise ValueError(f"{self.kind} name {name!r}: ':' is kept for families")

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorate

    def register_family(self, prefix: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Register `factory(member, **kwargs)` for the names "<prefix>:<member>"."""
        if ":" in prefix:
            raise ValueError(f"{self.kind} family {prefix!r}: give the prefix without ':'")

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if prefix in self._families:
                raise ValueError(f"{self.kind} family {prefix!r}: is already registered")
            self._families[prefix] = factory
            return factory

        return decorate

    def build(self, name: str, **kwargs: Any) -> T:
        if name in self._factories:
            return self._factories[name](**kwargs)
        prefix, sep, member = name.partition(":")
        if sep and prefix in self._families:
            if not member:
                raise UnknownComponentError(f"{self.kind} {name!r}: name one, as {prefix}:<name>")
            return self._families[prefix](member, **kwargs)
        known = [*self.names(), *(f"{p}:<name>" for p in self.families())]
        raise UnknownComponentError(f"unknown {self.kind} {name!r}; known: {', '.join(known)}")

    def names(self) -> list[str]:
        """The plain registered names (each builds with no arguments but its own)."""
        return sorted(self._factories)

    def families(self) -> list[str]:
        """The family prefixes, e.g. ["timm"] for names "timm:<model>"."""
        return sorted(self._families)
