"""The error type for bad user input: CLIs print its message as one line and exit non-zero."""


class UserError(Exception):
    """A problem with what the user asked for (config, paths, data), not a bug in maginet-jax."""


def check_choices(choices: dict) -> None:
    """`{setting: (value, allowed values)}`: UserError naming the first setting whose value is not allowed."""
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise UserError(f"{key}={value!r} is not one of {tuple(allowed)}")
