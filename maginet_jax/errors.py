"""The error type for bad user input: CLIs print its message as one line and exit non-zero."""


class UserError(Exception):
    """A problem with what the user asked for (config, paths, data), not a bug in maginet-jax."""
