"""One registry class for everything a config names: KD kinds (`ablation.distill.kd.KD_KINDS`)
and feature distances (`ablation.distill.distances.DISTANCES`).

A registry maps names to classes; ``@REGISTRY.register("name")`` adds a class (and sets its
``name``), ``REGISTRY.get(name)`` returns it or raises a one-line error listing the registered
names. It reads as a mapping (``name in``, ``[name]``, iteration in registration order).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Mapping[str, T], Generic[T]):
    def __init__(self, what: str):
        self.what = what  # "KD kind", "distance": how errors name an entry
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: register the class under `name`; a second class of that name is an error."""
        def add(cls: T) -> T:
            if name in self._classes:
                raise ValueError(f"{self.what} {name!r} is already registered by {self._classes[name].__name__}")
            cls.name = name
            self._classes[name] = cls
            return cls
        return add

    def get(self, name: str) -> T:  # type: ignore[override]
        if name not in self._classes:
            raise ValueError(f"unknown {self.what} {name!r}; registered: {', '.join(sorted(self._classes))}")
        return self._classes[name]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)
