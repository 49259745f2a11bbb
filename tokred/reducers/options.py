"""A method's options, read from its reducer's signature: checked when given from Python, parsed from text."""

import inspect
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokred.reducers.base import Reducer

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class Option:
    """One option of a method: its name, type (bool, int, float or str) and default."""

    name: str
    type: type
    default: Any

    def check(self, method: str, value: object) -> object:
        """``value`` if it has this option's type (an int is a valid float), else TypeError naming the type."""
        ok = isinstance(value, self.type) and not (self.type is not bool and isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise TypeError(
                f"option {self.name!r} of method {method!r} takes a {self.type.__name__}, got {value!r} "
                f"({type(value).__name__}); the default is {self.default!r}"
            )
        return value

    def parse(self, method: str, text: str) -> object:
        """The value written as ``text`` (bools: true/false, 1/0, yes/no, on/off)."""
        if self.type is bool:
            if text.lower() in TRUE + FALSE:
                return text.lower() in TRUE
        elif self.type is str:
            return text
        else:
            try:
                return self.type(text)
            except ValueError:
                pass
        raise ValueError(f"option {self.name}={text!r} of method {method!r} is not a {self.type.__name__}")


def method_options(reducer: type[Reducer]) -> dict[str, Option]:
    """The options a reducer class takes: the parameters of its ``stages`` when it plans across stages, else of
    its ``__init__``, past the arguments every reducer gets (dim, targets / target, num_patches)."""
    planned = reducer.stages.__func__ is not Reducer.stages.__func__  # type: ignore[attr-defined]
    function = reducer.stages if planned else reducer.__init__
    hints = typing.get_type_hints(function)
    parameters = list(inspect.signature(function).parameters.values())[3:]  # (dim, targets, num_patches) or
    # (self, dim, target)
    return {p.name: Option(p.name, hints[p.name], p.default) for p in parameters}


def check_options(method: str, reducer: type[Reducer], options: dict[str, object]) -> dict[str, object]:
    """``options`` with their types checked against the reducer's signature (TypeError naming what is wrong)."""
    known = method_options(reducer)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"method {method!r} has no option {', '.join(map(repr, unknown))}; {describe(method, known)}")
    return {name: known[name].check(method, value) for name, value in options.items()}


def parse_method_options(method: str, reducer: type[Reducer], items: Sequence[str]) -> dict[str, object]:
    """``["key=value", ...]`` (the command line's --method-option) → typed options of ``method``."""
    known = method_options(reducer)
    options: dict[str, object] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in known:
            raise ValueError(
                f"--method-option {item!r}: expected KEY=VALUE with KEY an option; {describe(method, known)}"
            )
        options[name] = known[name].parse(method, text)
    return options


def describe(method: str, known: dict[str, Option]) -> str:
    if not known:
        return f"{method!r} takes none"
    listed = ", ".join(f"{o.name} ({o.type.__name__}, default {o.default!r})" for o in known.values())
    return f"{method!r} takes {listed}"
