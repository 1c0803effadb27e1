"""Plain record classes for the `ssh3` start-up path, without `dataclasses`.

`import dataclasses` costs ~5 ms (it pulls in inspect, ast, dis, tokenize), a fifth
of what a multiplexed `ssh3 host true` may take in all (issue 6: 25 ms), and the
command-line and config records (cli.Args, cli.Target, config.Resolved) are imported
before anything else. `record` supports what they use, with dataclass syntax:
annotated fields with a default or `field(default_factory=...)`, construction by
position or keyword, `repr` and `==`.
"""

from __future__ import annotations

from collections.abc import Callable

_MISSING = object()


class _Factory:
    __slots__ = ("factory",)

    def __init__(self, factory: Callable[[], object]) -> None:
        self.factory = factory


def field(*, default_factory: Callable[[], object]) -> object:
    """A default made fresh for each instance (a list, a dict...)."""
    return _Factory(default_factory)


def record(cls: type) -> type:
    """Give `cls` an __init__ over its annotated fields, a __repr__ and __eq__."""
    names = [n for n in cls.__dict__.get("__annotations__", {})
             if not str(cls.__annotations__[n]).startswith("ClassVar")]
    defaults = {n: cls.__dict__.get(n, _MISSING) for n in names}
    for name, default in defaults.items():
        if isinstance(default, _Factory):
            delattr(cls, name)  # the class attribute would be shared by all instances

    def __init__(self: object, *args: object, **kwargs: object) -> None:
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes at most {len(names)} positional "
                            "arguments")
        values = dict(zip(names, args, strict=False))  # fewer args: the rest default
        for key, value in kwargs.items():
            if key not in defaults or key in values:
                raise TypeError(f"{cls.__name__}() got an unexpected or repeated "
                                f"argument {key!r}")
            values[key] = value
        for name in names:
            if name in values:
                value = values[name]
            else:
                default = defaults[name]
                if default is _MISSING:
                    raise TypeError(f"{cls.__name__}() missing argument {name!r}")
                value = default.factory() if isinstance(default, _Factory) else default
            setattr(self, name, value)

    def __repr__(self: object) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{cls.__name__}({inner})"

    def __eq__(self: object, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    cls.__init__ = __init__  # type: ignore[misc]
    cls.__repr__ = __repr__  # type: ignore[assignment, method-assign]
    cls.__eq__ = __eq__  # type: ignore[assignment, method-assign]
    cls.__hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass
    return cls
