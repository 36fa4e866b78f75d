"""What the CLIs share: one line for a bad flag or config override, and quiet library logs."""

from __future__ import annotations

import argparse
import logging as pylogging
import os
import re
import sys

from absl import flags, logging


class _OwnInfoOnly(pylogging.Filter):
    """Keeps our INFO lines and everyone's warnings: orbax alone logs ~40 INFO lines per checkpoint. Not orbax's
    warning that a checkpoint comes without metrics: with keep_best_checkpoints, only eval steps' have them."""

    def filter(self, record) -> bool:
        path = record.pathname.replace(os.sep, "/")
        if "did not provide metrics" in str(record.msg):
            return False
        return record.levelno >= pylogging.WARNING or "/maginet_jax/" in path or "/data_pipeline/" in path


def quiet_library_logs() -> None:
    """Our INFO lines and everyone's warnings only (ABSLHandler passes records to its python_handler)."""
    logging.get_absl_handler().python_handler.addFilter(_OwnInfoOnly())


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a bad flag as one line, "<name>: error: <message> (see --help)", exit status 2, as the absl
    CLIs give it (argparse's own error prints its usage first)."""

    def __init__(self, name: str, **kwargs):
        super().__init__(prog=f"python -m {name}", **kwargs)
        self.name = name

    def error(self, message: str):
        self.exit(2, f"{self.name}: error: {message} (see --help)\n")


def flag_error_line(e: BaseException) -> str:
    """The gist of a flag/config error: the innermost 'Error: message' of an embedded traceback, unquoted, after
    the flag whose value raised it when the message does not name its key."""
    text = _error_text(e)
    name = _flag_being_parsed(e)
    return f"--{name}: {text}" if name and name.rsplit(".", 1)[-1] not in text else text


def _flag_being_parsed(e: BaseException) -> str | None:
    """The absl flag whose parse `e`'s traceback passes through, if any, with the config override it was at.

    ml_collections raises a bare TypeError for an override into a tuple (--config.mesh.data=3), which names
    neither flag nor key. Its config flag parses every override in one frame, whose `field_path` says which:
    best effort (a private name; without it the message names the --config flag)."""
    name, tb = None, e.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        if isinstance(local.get("self"), flags.Flag):
            name = local["self"].name
            if isinstance(local.get("field_path"), str):
                name = f"{name}.{local['field_path']}"
        tb = tb.tb_next
    return name


def _error_text(e: BaseException) -> str:
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
        sys.exit(f"{prog}: error: {flag_error_line(e)}")  # several missing flags are one line too
