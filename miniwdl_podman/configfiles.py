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


def dump_toml(data: Dict[str, Any]) -> str:
    """A TOML document for nested tables of scalars and scalar lists (what these files hold)."""
    lines: List[str] = []

    def table(prefix: str, d: Dict[str, Any]) -> None:
        simple = {k: v for k, v in d.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in d.items() if isinstance(v, dict)}
        if prefix and (simple or not nested):
            lines.append(f"[{prefix}]")
        for k, v in simple.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        if prefix and (simple or not nested):
            lines.append("")
        for k, v in nested.items():
            table(f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k), v)

    table("", data)
    return "\n".join(lines).rstrip() + "\n"


def backup(path: str) -> Optional[str]:
    """Copy ``path`` aside before changing it; the backup's path (None if it did not exist)."""
    if not os.path.exists(path):
        return None
    dest = f"{path}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.copy2(path, dest)
    return dest


def update_toml(path: str, updates: Dict[str, Dict[str, Any]]) -> str:
    """Set ``{table: {key: value}}`` (dotted table names) in a TOML file; describe the change."""
    data: Dict[str, Any] = {}
    if os.path.exists(path):
        with open(path, "rb") as f:
            data = tomllib.load(f)
    for table, values in updates.items():
        node = data
        for part in table.split("."):
            node = node.setdefault(part, {})
        node.update(values)
    text = dump_toml(data)  # raises for content this writer cannot reproduce
    saved = backup(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# updated by `miniwdl-podman doctor --fix` on {time.ctime()}\n" + text)
    return f"wrote {path}" + (f" (backup: {saved})" if saved else "")


def update_miniwdl_cfg(path: str, section: str, key: str, value: str) -> str:
    parser = configparser.ConfigParser()
    if os.path.exists(path):
        parser.read(path)
    if not parser.has_section(section):
        parser.add_section(section)
    parser.set(section, key, value)
    saved = backup(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        parser.write(f)
    return f"set [{section}] {key} = {value} in {path}" + (f" (backup: {saved})" if saved else "")
