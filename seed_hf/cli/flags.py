"""Library errors in the scripts' words.

The library names its parameters in backticks (``"pass the column that holds the images as
`image_column`"``) or with their value (``"atol=0.0001 must be > 0"``); a script shows each as the
flag that sets it (``--image_column``, ``--onnx_atol=0.0001``). The flags
are read from the script's own argument dataclasses, so a parameter that is not one of its flags
keeps its library name."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["as_flags", "flag_names", "flags_in_errors"]

_FLAG = re.compile(r"(?<![\w-])--[A-Za-z]")
_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`|(?<![\w.`-])([A-Za-z_][A-Za-z0-9_]*)(?==)")


def flag_names(sources: Iterable[Any], aliases: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{parameter: flag}`` for every field of the given dataclasses (types or instances) or
    ``HfArgumentParser``s, plus ``aliases`` (a library parameter set by a flag of another name)."""
    flags: dict[str, str] = {}
    for source in sources:
        if dataclasses.is_dataclass(source):
            flags |= {f.name: f"--{f.name}" for f in dataclasses.fields(source)}
        elif hasattr(source, "dataclass_types"):  # HfArgumentParser
            for dataclass_type in source.dataclass_types:
                flags |= {f.name: f"--{f.name}" for f in dataclasses.fields(dataclass_type)}
        else:
            raise TypeError(
                f"flag_names takes dataclasses or HfArgumentParsers, got {type(source).__name__}."
            )
    return flags | dict(aliases or {})


def as_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each `` `parameter` `` and ``parameter=`` that ``flags`` knows replaced by
    its flag. A message that already names a flag (``--output_dir``) is in the script's words: its
    ``name=value`` pairs are values it reports (a run folder's config), only backticks are replaced."""
    speaks_flags = _FLAG.search(message) is not None

    def flag(match: re.Match) -> str:
        if match.group(2) and speaks_flags:
            return match.group(0)
        name = match.group(1) or match.group(2)
        return flags.get(name, match.group(0))

    return _PARAMETER.sub(flag, message)


@contextmanager
def flags_in_errors(*sources: Any, aliases: Mapping[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Re-raises the errors of the block (the same exception, traceback kept) with the parameters
    its message names shown as the flags of ``sources`` (see :func:`flag_names`)."""
    flags = flag_names(sources, aliases)
    try:
        yield flags
    except Exception as error:
        if error.args and isinstance(error.args[0], str):
            error.args = (as_flags(error.args[0], flags), *error.args[1:])
        raise
