"""A registry of named things (the methods, the added criteria, the datasets): one name each, kept in
the order they were added (the order of figures and tables), and looked up with a one-line error that
names the choices."""
from __future__ import annotations

from typing import Generic, Iterable, TypeVar

from e2mc.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Things of one ``kind`` (a word for error messages: "method") by their ``name`` attribute."""

    def __init__(self, kind: str, items: Iterable[T] = ()) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        for item in items:
            self.add(item)

    def add(self, item: T) -> T:
        """Add ``item`` under its name; a ValueError if that name is taken. Returns the item."""
        if item.name in self._items:
            raise ValueError(f"{self.kind} {item.name!r} is registered twice")
        self._items[item.name] = item
        return item

    def remove(self, name: str) -> T:
        """Take ``name`` out of the registry (for a test that added its own); returns it."""
        try:
            return self._items.pop(name)
        except KeyError:
            raise ValueError(f"{self.kind} {name!r} is not registered") from None

    def names(self) -> tuple[str, ...]:
        """Every name, in the order added."""
        return tuple(self._items)

    def get(self, name: str) -> T:
        """The thing called ``name``; a UserError naming the choices otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a configuration file
            raise UserError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._items)}") from None
