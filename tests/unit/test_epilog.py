"""The site Epilog of the README (``contrib/slurm/epilog.sh``), run as Slurm runs it (its job
variables set): which node stores it removes and which it leaves alone. The live Slurm test
shows it removing real stores after real jobs."""

from __future__ import annotations

import getpass
import os
import subprocess
from pathlib import Path
from typing import Dict

EPILOG = Path(__file__).resolve().parents[2] / "contrib" / "slurm" / "epilog.sh"


def _epilog(tmp_path: Path, pattern: str, job: str = "42", **env: str) -> str:
    conf = tmp_path / "epilog.conf"
    conf.write_text(f"NODE_STORAGE={pattern}\n")
    base: Dict[str, str] = {
        "PATH": os.environ["PATH"],
        "MINIWDL_PODMAN_EPILOG_CONF": str(conf),
        "SLURM_JOB_ID": job,
        "SLURM_JOB_USER": getpass.getuser(),
        "SLURM_JOB_UID": str(os.getuid()),
    }
    proc = subprocess.run(["sh", str(EPILOG)], env={**base, **env}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr  # an Epilog never fails a node
    return proc.stderr


def test_the_jobs_own_store_is_removed(tmp_path: Path) -> None:
    """The store the pattern names for this job and user is removed; another job's is not."""
    mine = tmp_path / f"{getpass.getuser()}-42" / "root"
    other = tmp_path / f"{getpass.getuser()}-43"
    mine.mkdir(parents=True)
    other.mkdir()
    said = _epilog(tmp_path, f"{tmp_path}/%u-%j")
    assert not mine.parent.exists() and other.exists()
    assert "removed the job's Podman store" in said


def test_a_store_shared_by_jobs_is_left_alone(tmp_path: Path) -> None:
    """A pattern without %j names a store the user's other jobs may be using: kept."""
    store = tmp_path / getpass.getuser()
    store.mkdir()
    said = _epilog(tmp_path, f"{tmp_path}/%u")
    assert store.exists() and "left alone" in said


def test_a_symlink_or_a_directory_of_someone_else_is_left_alone(tmp_path: Path) -> None:
    """A store path that is a symlink (to anywhere), or a directory owned by another uid, is
    never removed."""
    target = tmp_path / "precious"
    target.mkdir()
    (tmp_path / "s-42").symlink_to(target)
    said = _epilog(tmp_path, f"{tmp_path}/s-%j")
    assert target.exists() and "left alone" in said
    (tmp_path / "t-42").mkdir()
    said = _epilog(tmp_path, f"{tmp_path}/t-%j", SLURM_JOB_UID=str(os.getuid() + 1))
    assert (tmp_path / "t-42").exists() and "left alone" in said


def test_nothing_to_do_is_quiet(tmp_path: Path) -> None:
    """No store for this job (a job of another backend): nothing said, nothing done."""
    assert _epilog(tmp_path, f"{tmp_path}/s-%j") == ""
