"""Validation of paths callers send (input files): shared by the server, which refuses a
bad request before anything is recorded, and the runner, which checks again."""

from __future__ import annotations

import base64
import binascii
from pathlib import PurePosixPath

from ._errors import InvalidInput
from ._messages import InputFile


def check_relative_path(path: str) -> PurePosixPath:
    """A relative path inside the workspace: not absolute, no '..', no NUL, not empty."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\x00" in path or not p.parts or path.startswith("~"):
        raise InvalidInput(f"file path {path[:200]!r} is not allowed: use a relative path inside the workspace, without '..'")
    return p


def input_file_bytes(f: InputFile, *, max_bytes: int) -> bytes:
    """The content of an input file, decoded and size-checked (InvalidInput otherwise)."""
    check_relative_path(f.path)
    if f.encoding == "base64":
        try:
            data = base64.b64decode(f.content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"file {f.path[:200]!r} says base64 but its content is not valid base64") from None
    else:
        data = f.content.encode()
    if len(data) > max_bytes:
        raise InvalidInput(f"file {f.path[:200]!r} is {len(data)} bytes, over the {max_bytes}-byte limit")
    return data
