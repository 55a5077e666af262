"""nox sessions: lint, typecheck, unit, package (the built wheel, tested), tests (live, as
yourself), rootless (as root: test bed), bench (the benchmark of docs/benchmarks.md).

``nox -s lint typecheck package rootless rootless_podman5 rootless_podman6`` as root on a fresh
Debian 12 machine is the full CI run (``.ci/run``): it
prepares an unprivileged user with rootless Podman (contrib/testbed/setup.sh) and runs the whole
test suite as that user, failing (never skipping) if rootless Podman cannot run.
"""

from __future__ import annotations

import os
import sys

import nox

nox.options.sessions = ["lint", "typecheck", "unit"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3"


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", "miniwdl_podman", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "miniwdl_podman", "tests", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("mypy", "-e", ".")
    session.run("mypy")


@nox.session(python=PYTHON)
def unit(session: nox.Session) -> None:
    """Unit tests: pure option computation, no Podman needed."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/unit", *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """All tests, live ones against *your* rootless Podman (run as an unprivileged user)."""
    if os.geteuid() == 0:
        session.error("run as an unprivileged user with rootless Podman, or use `nox -s rootless`")
    session.install("-e", ".[test]")
    session.run("pytest", "--fail-on-skip", "tests", *session.posargs)  # not single_uid


@nox.session(python=PYTHON)
def package(session: nox.Session) -> None:
    """Build the sdist and wheel, check them with twine, install the wheel into a clean venv and
    run the unit tests and `miniwdl-podman --version` against it (a file missing from the wheel
    fails here)."""
    import shutil
    import tempfile

    session.install("build", "twine")
    dist = tempfile.mkdtemp(prefix="miniwdl-podman-dist-")
    session.run("python", "-m", "build", "--outdir", dist)
    wheels = [f for f in os.listdir(dist) if f.endswith(".whl")]
    sdists = [f for f in os.listdir(dist) if f.endswith(".tar.gz")]
    if len(wheels) != 1 or len(sdists) != 1:
        session.error(f"expected one wheel and one sdist in {dist}: {os.listdir(dist)}")
    session.run("twine", "check", "--strict", *(os.path.join(dist, f) for f in wheels + sdists))
    # every file the README names is in the sdist (the package index shows the README, whose
    # file references are not links there)
    import re
    import tarfile

    with tarfile.open(os.path.join(dist, sdists[0])) as sdist:
        members = {m.split("/", 1)[-1] for m in sdist.getnames()}
    with open("README.md", encoding="utf-8") as f:
        named = set(re.findall(r"`((?:contrib|docs)/[\w./-]+\.\w+|CHANGELOG\.md)`", f.read()))
    absent = sorted(n for n in named if n not in members)
    if absent:
        session.error(f"files the README names are missing from the sdist: {absent}")
    work = tempfile.mkdtemp(prefix="miniwdl-podman-wheel-")
    venv = os.path.join(work, "venv")
    # virtualenv (nox's own dependency): Debian's python3 has no ensurepip without python3-venv
    session.run(sys.executable, "-m", "virtualenv", "-q", venv, external=True)
    py = os.path.join(venv, "bin", "python")
    session.run(py, "-m", "pip", "install", "-q", os.path.join(dist, wheels[0]), "pytest",
                external=True)  # fmt: skip
    version = session.run(
        py, "-c", "import miniwdl_podman; print(miniwdl_podman.__version__)",
        external=True, silent=True,
    )  # fmt: skip
    out = session.run(os.path.join(venv, "bin", "miniwdl-podman"), "--version",
                      external=True, silent=True)  # fmt: skip
    if not isinstance(out, str) or out.strip() != f"miniwdl-podman {str(version).strip()}":
        session.error(f"miniwdl-podman --version said {out!r}, the package is {version!r}")
    # the unit tests, away from this checkout (so they import the installed wheel), with the
    # files they read beside them
    for name in ("tests", "contrib"):
        shutil.copytree(name, os.path.join(work, name))
    shutil.copy("pyproject.toml", work)
    session.chdir(work)
    session.run(py, "-m", "pytest", "-p", "no:cacheprovider", "tests/unit", external=True)
    session.run(py, "-c", "import miniwdl_podman, sys; sys.exit('miniwdl_podman' not in"
                " miniwdl_podman.__file__ or 'site-packages' not in miniwdl_podman.__file__)",
                external=True)  # fmt: skip


@nox.session(python=False)
def rootless(session: nox.Session) -> None:
    """As root: prepare the test bed (user, Podman, images, registry, Slurm cluster) and run all
    tests as its unprivileged user."""
    if os.geteuid() != 0:
        session.error("run as root: it installs packages and creates the test user")
    session.run("bash", "contrib/testbed/run-tests.sh", *session.posargs, external=True)


def _lane(session: nox.Session, lane: str) -> None:
    if os.geteuid() != 0:
        session.error("run as root: it builds the lane's tree and the test users in it")
    session.run("bash", "contrib/testbed/lane.sh", lane, *session.posargs, external=True)


@nox.session(python=False)
def rootless_podman5(session: nox.Session) -> None:
    """As root: every test as an unprivileged user on Podman 5.x (Debian 13's: crun, pasta,
    cgroup v2), in a cached debootstrap tree (contrib/testbed/lane.sh)."""
    _lane(session, "podman5")


@nox.session(python=False)
def rootless_podman6(session: nox.Session) -> None:
    """As root: every test as an unprivileged user on Podman 6.x (Debian experimental's: crun,
    pasta, cgroup v2), in a cached debootstrap tree (contrib/testbed/lane.sh)."""
    _lane(session, "podman6")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Benchmark against the raw CLI and miniwdl's built-in podman backend (docs/benchmarks.md).

    As root: prepares the test bed and runs the benchmark as its unprivileged user. As a user
    whose rootless Podman works (and with the test bed's loopback registry): runs it directly.
    Arguments go to contrib/bench/bench.py (e.g. `nox -s bench -- --reps 5`).
    """
    if os.geteuid() == 0:
        session.run("bash", "contrib/testbed/bench.sh", *session.posargs, external=True)
    else:
        session.run(sys.executable, "contrib/bench/bench.py", *session.posargs, external=True)
