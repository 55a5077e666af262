"""GPUs through CDI: which device kinds this host's CDI spec files declare, checked before a
``runtime.gpu`` task is created (CDI specs are per host: on Slurm this runs on the node)."""

from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Sequence

from .errors import ContainerFailed
from .settings import Settings

_CDI_KIND = re.compile(r"""^\s*["']?kind["']?\s*:\s*["']?([A-Za-z0-9._/-]+)""", re.MULTILINE)


def cdi_kinds(spec_dirs: Sequence[str]) -> Dict[str, str]:
    """Device kinds (``vendor/class``) declared by CDI spec files in ``spec_dirs`` → file."""
    ans: Dict[str, str] = {}
    for d in spec_dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            if not name.endswith((".json", ".yaml", ".yml")):
                continue
            path = os.path.join(d, name)
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read(1 << 20)
            except OSError:
                continue
            if name.endswith(".json"):
                try:
                    kinds = [str(json.loads(text).get("kind", ""))]
                except (ValueError, AttributeError):
                    kinds = []
            else:
                kinds = _CDI_KIND.findall(text)
            for kind in kinds:
                if kind:
                    ans.setdefault(kind, path)
    return ans


def missing_cdi_devices(devices: Sequence[str], spec_dirs: Sequence[str]) -> List[str]:
    """The CDI device names (``vendor/class=name``) whose kind no spec file declares."""
    kinds = cdi_kinds(spec_dirs)
    return [d for d in devices if "=" in d and d.split("=", 1)[0] not in kinds]


def gpu_devices(settings: Settings) -> List[str]:
    """The CDI devices for a runtime.gpu task on this host, or an error naming the fix."""
    missing = missing_cdi_devices(settings.gpu_devices, settings.cdi_spec_dirs)
    if missing:
        raise ContainerFailed(
            f"runtime.gpu needs the CDI device(s) {', '.join(missing)}, but no CDI spec in"
            f" {', '.join(settings.cdi_spec_dirs)} declares them; generate one (NVIDIA:"
            " `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`), or set"
            " [podman_rootless] gpu_devices / cdi_spec_dirs"
        )
    return list(settings.gpu_devices)
