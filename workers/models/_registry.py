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

    A registry with a join (`register_join`) also builds names "A+B+…": each part by its own
    name, then `join(parts)`. Keyword arguments of a joined name are addressed to one part as
    "<part name>.<argument>" (e.g. `histo_cnn.width`).

    A factory registered with `resolution_arg` takes the tiles' µm/px under that name:
    `resolution_kwargs` gives it, so a bundle records the resolution its encoder was built for.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._families: dict[str, Callable[..., T]] = {}
        self._join: Callable[[list[T]], T] | None = None
        self._resolution_args: dict[str, str] = {}

    def register(
        self, name: str, *, resolution_arg: str | None = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        if ":" in name or "+" in name:
            raise ValueError(f"{self.kind} name {name!r}: ':' and '+' are kept for families, joins")

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            if resolution_arg is not None:
                self._resolution_args[name] = resolution_arg
            return factory

        return decorate

    def resolution_kwargs(self, name: str, mpp: float) -> dict[str, float]:
        """The keyword arguments that tell `name` (or each part of a joined name) its tiles'
        µm/px: empty when none of them takes one."""
        parts = self.split(name)
        out: dict[str, float] = {}
        for part in parts:
            arg = self._resolution_args.get(part)
            if arg is not None:
                out[arg if len(parts) == 1 else f"{part}.{arg}"] = float(mpp)
        return out

    def register_family(self, prefix: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Register `factory(member, **kwargs)` for the names "<prefix>:<member>"."""
        if ":" in prefix or "+" in prefix:
            raise ValueError(f"{self.kind} family {prefix!r}: give the prefix without ':' or '+'")

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if prefix in self._families:
                raise ValueError(f"{self.kind} family {prefix!r}: is already registered")
            self._families[prefix] = factory
            return factory

        return decorate

    def register_join(self, join: Callable[[list[T]], T]) -> Callable[[list[T]], T]:
        """Register how the parts of a name "A+B+…" are combined into one."""
        if self._join is not None:
            raise ValueError(f"{self.kind} join is already registered")
        self._join = join
        return join

    def split(self, name: str) -> list[str]:
        """The parts of a joined name ("A+B" → ["A", "B"]); [name] for any other name."""
        if "+" not in name or self._join is None:
            return [name]
        parts = [p.strip() for p in name.split("+")]
        if any(not p for p in parts):
            raise UnknownComponentError(f"{self.kind} {name!r}: an empty part between '+'")
        return parts

    def build(self, name: str, **kwargs: Any) -> T:
        parts = self.split(name)
        if len(parts) > 1:
            return self._build_joined(name, parts, kwargs)
        return self._build_one(name, **kwargs)

    def _build_joined(self, name: str, parts: list[str], kwargs: dict[str, Any]) -> T:
        assert self._join is not None
        if len(set(parts)) != len(parts):
            raise UnknownComponentError(f"{self.kind} {name!r}: a part named twice")
        by_part: dict[str, dict[str, Any]] = {p: {} for p in parts}
        for key, value in kwargs.items():
            part, _, arg = key.rpartition(".")
            if part not in by_part or not arg:
                raise UnknownComponentError(
                    f"{self.kind} {name!r}: argument {key!r} names no part; give it as "
                    f"'<part>.<argument>' with a part of {', '.join(parts)}"
                )
            by_part[part][arg] = value
        return self._join([self._build_one(p, **by_part[p]) for p in parts])

    def _build_one(self, name: str, **kwargs: Any) -> T:
        if name in self._factories:
            return self._factories[name](**kwargs)
        prefix, sep, member = name.partition(":")
        if sep and prefix in self._families:
            if not member:
                raise UnknownComponentError(f"{self.kind} {name!r}: name one, as {prefix}:<name>")
            return self._families[prefix](member, **kwargs)
        known = [*self.names(), *(f"{p}:<name>" for p in self.families())]
        if self._join is not None:
            known.append("<name>+<name>")
        raise UnknownComponentError(f"unknown {self.kind} {name!r}; known: {', '.join(known)}")

    def names(self) -> list[str]:
        """The plain registered names (each builds with no arguments but its own)."""
        return sorted(self._factories)

    def families(self) -> list[str]:
        """The family prefixes, e.g. ["timm"] for names "timm:<model>"."""
        return sorted(self._families)
