"""Config-file writers for ``doctor --fix``: Podman's TOML files and miniwdl's INI file.

Each change is made after copying the file aside (``FILE.bak-<time>``).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import sys
import time
from typing import Any, Dict, List, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def containers_config_dir() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "containers")


# -- TOML editing (containers.conf / storage.conf) ----------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list) and all(not isinstance(x, dict) for x in v):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ValueError(f"cannot write {type(v).__name__} values")


def backup(path: str) -> Optional[str]:
    """Copy ``path`` aside before changing it; the backup's path (None if it did not exist)."""
    if not os.path.exists(path):
        return None
    dest = f"{path}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.copy2(path, dest)
    return dest


class EditRefused(ValueError):
    """A file this editor cannot change safely (the message says what to do by hand)."""


def _header(line: str) -> Optional[str]:
    """The table or section a header line opens (``[a.b]`` → ``a.b``; spaces and a comment
    after it allowed), or None."""
    m = re.match(r"^\s*\[\s*([^\[\]]+?)\s*\](\s*[#;].*)?\s*$", line)
    return re.sub(r"\s*\.\s*", ".", m.group(1)) if m else None


def _set_line(lines: List[str], table: str, key: str, line: str, assign: str = "=") -> List[str]:
    """``lines`` with ``key`` in ``[table]`` set to ``line``: the key's own line replaced, else
    the line added after the table's header, else the table appended; every other line (and
    comment) kept as it was. ``assign``: the characters that may follow a key."""
    start = next((i for i, ln in enumerate(lines) if _header(ln) == table), None)
    if start is None:
        return [*lines, *([""] if lines and lines[-1].strip() else []), f"[{table}]", line]
    end = next((i for i in range(start + 1, len(lines)) if _header(lines[i]) is not None),
               len(lines))  # fmt: skip
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*[{re.escape(assign)}]")
    for i in range(start + 1, end):
        if pattern.match(lines[i]):
            return [*lines[:i], line, *lines[i + 1 :]]
    return [*lines[: start + 1], line, *lines[start + 1 :]]


def _write(path: str, text: str, what: str) -> str:
    """Write ``text`` to ``path`` after backing the file up; describe the change."""
    saved = backup(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return f"{what} in {path}" + (f" (backup: {saved})" if saved else "")


def update_toml(path: str, updates: Dict[str, Dict[str, Any]]) -> str:
    """Set ``{table: {key: value}}`` (dotted table names) in a TOML file, in place: the other
    lines, comments included, are kept; the result is parsed before it is written, and a file
    this line editor cannot change that way (a value over several lines, an inline table) is
    left alone with :class:`EditRefused`."""
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    lines = text.splitlines()
    for table, values in updates.items():
        for key, value in values.items():
            line = f"{_toml_key(key)} = {_toml_value(value)}  # miniwdl-podman doctor --fix"
            lines = _set_line(lines, table, key, line)
    new = "\n".join(lines) + "\n"
    try:
        data = tomllib.loads(new)
        for table, values in updates.items():
            node = data
            for part in table.split("."):
                node = node[part]
            if any(node.get(k) != v for k, v in values.items()):
                raise KeyError(table)
    except (tomllib.TOMLDecodeError, KeyError, TypeError, AttributeError):
        wanted = "; ".join(
            f"[{t}] " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in vals.items())
            for t, vals in updates.items()
        )
        raise EditRefused(f"{path} is laid out in a way this editor does not change safely;"
                          f" set by hand: {wanted}") from None  # fmt: skip
    return _write(path, new, "set " + ", ".join(f"[{t}]" for t in updates))


def write_dropin(path: str, updates: Dict[str, Dict[str, Any]]) -> str:
    """A drop-in file of our own (Podman's ``containers.conf.d``), written whole: the user's
    files are not touched."""
    lines = ["# written by `miniwdl-podman doctor --fix`; remove this file to undo"]
    for table, values in updates.items():
        lines += [
            "",
            f"[{table}]",
            *(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items()),
        ]
    return _write(path, "\n".join(lines) + "\n", "wrote a drop-in")


def update_miniwdl_cfg(path: str, section: str, key: str, value: str) -> str:
    """Set ``[section] key = value`` in a miniwdl config file, in place, every other line and
    comment kept; checked with configparser before it is written."""
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    new = "\n".join(_set_line(text.splitlines(), section, key, f"{key} = {value}", "=:")) + "\n"
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(new)
        ok = parser.get(section, key) == value
    except configparser.Error:
        ok = False
    if not ok:
        raise EditRefused(f"{path} is laid out in a way this editor does not change safely;"
                          f" set by hand: [{section}] {key} = {value}")  # fmt: skip
    return _write(path, new, f"set [{section}] {key} = {value}")
