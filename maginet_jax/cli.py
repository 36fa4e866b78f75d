"""What the CLIs share: one line for a bad flag or config override, and quiet library logs."""

from __future__ import annotations

import logging as pylogging
import os
import re
import sys

from absl import flags, logging


class _OwnInfoOnly(pylogging.Filter):
    """Keeps our INFO lines and everyone's warnings: orbax alone logs ~40 INFO lines per checkpoint."""

    def filter(self, record) -> bool:
        path = record.pathname.replace(os.sep, "/")
        return record.levelno >= pylogging.WARNING or "/maginet_jax/" in path or "/data_pipeline/" in path


def quiet_library_logs() -> None:
    """Our INFO lines and everyone's warnings only (ABSLHandler passes records to its python_handler)."""
    logging.get_absl_handler().python_handler.addFilter(_OwnInfoOnly())


def flag_error_line(e: BaseException) -> str:
    """The gist of a flag/config error: the innermost 'Error: message' of an embedded traceback, unquoted."""
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    inner = re.findall(r"^\w*(?:Error|Exception): (.+)$", text, flags=re.M)
    text = inner[-1] if inner and "Traceback" in text else text
    text = " ".join(text.split())
    errno = re.search(r"\[Errno \d+\] .*$", text)  # a config file that cannot be read
    text = f"cannot load the config file: {errno.group(0)}" if errno else text
    while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # KeyError reprs nest quotes
        text = text[1:-1]
    if re.fullmatch(r"[\w.]+", text):  # a bare KeyError from a config override
        return f"unknown config key '{text}'"
    return re.sub(r"^'?([\w.]+)'? Did you mean", r"unknown config key '\1'; did you mean", text)


def parse_flags(argv: list[str], prog: str) -> list[str]:
    """absl flag parsing for a CLI without a config file: a bad or missing flag is one line naming `prog`."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"{prog}: error: {e}")
