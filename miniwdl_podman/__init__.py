"""miniwdl_podman: run miniwdl's WDL tasks in rootless Podman containers via the Podman API.

Select the backend with ``MINIWDL__SCHEDULER__CONTAINER_BACKEND=podman_rootless``; options live
in the ``[podman_rootless]`` config section (see ``contrib/podman_rootless.cfg``).
"""

__version__ = "0.1.0"
