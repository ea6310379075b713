"""Name → factory registries for encoders and MIL heads, so a new model is one file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from workers.errors import UnknownComponentError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named set of factories; `kind` appears in error messages ("encoder", "MIL head")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorate

    def build(self, name: str, **kwargs: Any) -> T:
        try:
            factory = self._factories[name]
        except KeyError:
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._factories))}"
            ) from None
        return factory(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._factories)
