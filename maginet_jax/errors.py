"""The error type for bad user input (CLIs print its message as one line and exit non-zero), and the checks of
config values that raise it."""

import math
import numbers


class UserError(Exception):
    """A problem with what the user asked for (config, paths, data), not a bug in maginet-jax."""


def check_choices(choices: dict) -> None:
    """`{setting: (value, allowed values)}`: UserError naming the first setting whose value is not allowed."""
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise UserError(f"{key}={value!r} is not one of {tuple(allowed)}")


def check_divisible(what: str, size: int, multiple: int, why: str) -> None:
    """UserError unless `size` (an image size, named `what`) is a multiple of `multiple`; `why` says who needs it."""
    if size % multiple:
        raise UserError(f"{what} {size} is not divisible by {multiple}: {why}")


def check_number(key: str, value, *, at_least=None, above=None, below=None, at_most=None,
                 integer: bool = False) -> None:
    """UserError unless `value` is a finite number (an int with `integer`; never a bool) within the bounds given.

    Catches what comparisons alone let through: NaN passes neither `< 0` nor `> 0`, so a NaN learning rate or
    loss weight would otherwise reach the first train step, and a string or float width a layer constructor."""
    kind = numbers.Integral if integer else numbers.Real  # numpy scalars too
    bounds = [f"{op} {b}" for op, b in ((">=", at_least), (">", above), ("<", below), ("<=", at_most))
              if b is not None]
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value) and (
        (at_least is None or value >= at_least) and (above is None or value > above)
        and (below is None or value < below) and (at_most is None or value <= at_most))
    if not ok:
        raise UserError(f"{key} must be {'an integer' if integer else 'a finite number'}"
                        f"{' ' + ' and '.join(bounds) if bounds else ''}, got {value!r}")


def check_numbers(key: str, values, **bounds) -> None:
    """`check_number` on each entry of the sequence `values` (the config tuple `key`), naming the entry."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise UserError(f"{key} must be a sequence of numbers, got {values!r}")
    for i, value in enumerate(values):
        check_number(f"{key}[{i}]", value, **bounds)


def first_line(e: BaseException) -> str:
    """The first line of a library error's message (orbax's run to dozens), or its type when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def root_cause_line(e: BaseException, limit: int = 300) -> str:
    """`first_line` of the error that started a chain (orbax wraps TensorStore's read error in a bare Exception
    whose message is a page of specs), at most `limit` characters."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    line = first_line(e)
    return line if len(line) <= limit else line[:limit - 1] + "…"
