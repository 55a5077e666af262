"""``miniwdl-podman pull``: get every image a workflow may use before running it.

Reads the WDL document and its inputs as ``miniwdl run`` does, finds the images
(:mod:`~miniwdl_podman.workflow_images`), and gets each once into the store the
``podman_rootless`` backend uses (the same ``[podman_rootless]`` settings and runtime: pull
policy, private service, registries), building inline Dockerfiles the same way; with
``shared_store`` set it stages each image into that shared store instead
(:mod:`~miniwdl_podman.shared_store`). Prints ``IMAGE → DIGEST`` for each, lists the ones only
the run can know, and fails naming every image that cannot be had, so a run never finds out
halfway through a scatter.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

import WDL
from WDL import CLI
from WDL.runtime import config
from WDL.runtime.error import DownloadFailed

from . import plan as plan_mod
from . import settings as settings_mod
from . import workflow_images
from .errors import BackendError
from .runtime import open_runtime
from .shared_store import SharedStore


def run(
    wdl: str,
    inputs: Sequence[str],
    input_file: Optional[str],
    task: Optional[str],
    cfg_file: Optional[str],
) -> int:
    logger = logging.getLogger("miniwdl-podman-pull")
    logging.basicConfig(level=logging.CRITICAL)
    try:
        doc = WDL.load(wdl)
        target, input_env, _json = CLI.runner_input(
            doc, list(inputs), input_file, [], [], task=task, check_required=False,
            downloadable=lambda _uri, _is_dir: False, root="/",
        )  # fmt: skip
        cfg = config.Loader(logger, [cfg_file] if cfg_file else None)
        settings = settings_mod.load(cfg)
    except (WDL.Error.SyntaxError, WDL.Error.ValidationError, WDL.Error.MultipleValidationErrors,
            WDL.Error.ImportError) as exn:  # fmt: skip
        print(f"miniwdl-podman pull: {wdl} is not valid WDL: {exn}", file=sys.stderr)
        return 2
    except (WDL.Error.InputError, BackendError, OSError) as exn:
        print(f"miniwdl-podman pull: {exn}", file=sys.stderr)
        return 2
    defaults: Dict[str, object] = cfg.get_dict("task_runtime", "defaults")
    uses = workflow_images.find(
        target, input_env, str(defaults.get("docker", plan_mod.DEFAULT_IMAGE))
    )
    images = sorted({u.image for u in uses if u.image})
    dockerfiles = {u.dockerfile: u.where for u in uses if u.dockerfile}
    for use in uses:
        if use.unknown:
            print(f"?  {use.where}: {use.unknown}")
    if not images and not dockerfiles:
        return 0
    shared = SharedStore(settings.shared_store) if settings.shared_store else None
    try:
        # staging into a shared store reads the user's own store; the service needs no other
        runtime = open_runtime(settings, logger, reap=False, shared=shared is None)
    except BackendError as exn:
        print(f"miniwdl-podman pull: {exn}", file=sys.stderr)
        return 1
    failed: List[str] = []
    try:
        for image in images:
            try:
                if shared is not None:
                    staged = runtime.engine.stage(image, shared, logger)
                    print(f"{image} → {staged.digest or staged.id} (shared store)")
                    continue
                ref = runtime.engine.images.ensure(image, logger)
                print(f"{image} → {ref.digest or ref.id}")
            except (BackendError, DownloadFailed) as exn:  # a pull failure is a DownloadFailed
                failed.append(f"{image}: {exn}")
        with tempfile.TemporaryDirectory(prefix="miniwdl-podman-pull-") as tmp:
            for dockerfile, where in dockerfiles.items():
                try:
                    ref = runtime.engine.images.build(
                        dockerfile, os.path.join(tmp, "inlineDockerfile.log"), logger
                    )
                    print(f"inlineDockerfile of {where} → {ref.id}")
                except (BackendError, DownloadFailed) as exn:
                    failed.append(f"inlineDockerfile of {where}: {exn}")
    finally:
        runtime.close(logger)
    if failed:
        print(f"miniwdl-podman pull: {len(failed)} image(s) cannot be had:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
