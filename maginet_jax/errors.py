"""The error type for bad user input: CLIs print its message as one line and exit non-zero."""


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


def first_line(e: BaseException) -> str:
    """The first line of a library error's message (orbax's run to dozens), or its type when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
