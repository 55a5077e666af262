"""pin_digests's pin files (no Podman, no Slurm): who resolves a tag for the run, what the
others run, and what happens when the resolver dies or fails."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import List

import pytest
from WDL.runtime.error import Terminated

from miniwdl_podman import pins

LOG = logging.getLogger("test")
DIGEST = "sha256:" + "d" * 64


def test_references_are_pinned_in_the_repository_a_pull_would_use() -> None:
    """A tag is replaced by the digest, qualified as a pull qualifies it (a registry port is
    not a tag); localhost/ names and digest references are not pinned."""
    assert pins.pinned_reference("ubuntu:22.04", DIGEST) == f"docker.io/library/ubuntu@{DIGEST}"
    assert pins.pinned_reference("127.0.0.1:5000/a/b:2", DIGEST) == f"127.0.0.1:5000/a/b@{DIGEST}"
    assert pins.pinned_reference("127.0.0.1:5000/a/b", DIGEST) == f"127.0.0.1:5000/a/b@{DIGEST}"
    assert pins.pinnable("quay.io/org/tool:1")
    assert not pins.pinnable("localhost/mine:1") and not pins.pinnable(f"x/y@{DIGEST}")
    assert not pins.pinnable("")


def test_the_digest_of_the_names_own_repository_is_chosen() -> None:
    """An image known under several repositories is pinned to the digest listed for the name's
    own; without one, the image's digest."""
    listed = [f"127.0.0.1:5999/other@sha256:{'1' * 64}", f"127.0.0.1:5000/a/b@sha256:{'2' * 64}"]
    assert pins.digest_for("127.0.0.1:5000/a/b:2", listed, DIGEST) == f"sha256:{'2' * 64}"
    assert pins.digest_for("quay.io/x/y:1", listed, DIGEST) == DIGEST


def test_the_first_job_resolves_and_the_others_run_its_digest(tmp_path: Path) -> None:
    """The first caller resolves (and runs the tag it resolved); every later one gets
    repository@digest without resolving."""
    run = pins.RunPins(str(tmp_path))
    calls: List[str] = []

    def fetch() -> str:
        calls.append("fetch")
        return DIGEST

    assert run.resolve("quay.io/x/y:1", fetch, LOG) == "quay.io/x/y:1"
    assert run.resolve("quay.io/x/y:1", fetch, LOG) == f"quay.io/x/y@{DIGEST}"
    assert calls == ["fetch"]
    assert not list(tmp_path.glob("*.claim"))


def test_concurrent_jobs_wait_for_the_claimant(tmp_path: Path) -> None:
    """Jobs arriving while the first resolves wait for its pin and run its digest."""
    run = pins.RunPins(str(tmp_path))
    release = threading.Event()
    got: List[str] = []

    def slow_fetch() -> str:
        release.wait(10)
        return DIGEST

    first = threading.Thread(target=lambda: got.append(run.resolve("q.io/x:1", slow_fetch, LOG)))
    first.start()
    while not list(tmp_path.glob("*.claim")):
        time.sleep(0.01)
    waiter = threading.Thread(
        target=lambda: got.append(run.resolve("q.io/x:1", lambda: "sha256:never", LOG))
    )
    waiter.start()
    time.sleep(0.3)
    release.set()
    first.join(10)
    waiter.join(10)
    assert sorted(got) == sorted(["q.io/x:1", f"q.io/x@{DIGEST}"])


def test_a_dead_claimants_claim_is_taken_over(tmp_path: Path) -> None:
    """A claim not refreshed for the stale time (its job was killed) is taken over."""
    run = pins.RunPins(str(tmp_path), stale=1.0)
    claim = tmp_path / (Path(run._path("q.io/x:1", ".claim")).name)
    claim.write_text("dead job")
    old = time.time() - 5
    os.utime(claim, (old, old))
    assert run.resolve("q.io/x:1", lambda: DIGEST, LOG) == "q.io/x:1"
    assert run.recorded("q.io/x:1") == DIGEST


def test_a_failed_resolution_lets_the_next_job_try(tmp_path: Path) -> None:
    """A claimant whose pull fails records nothing and leaves no claim: the next job tries
    itself (and gets the error itself if the registry still fails)."""
    run = pins.RunPins(str(tmp_path))

    def failing() -> str:
        raise RuntimeError("registry down")

    with pytest.raises(RuntimeError):
        run.resolve("q.io/x:1", failing, LOG)
    assert run.recorded("q.io/x:1") is None and not list(tmp_path.glob("*.claim"))
    assert run.resolve("q.io/x:1", lambda: DIGEST, LOG) == "q.io/x:1"


def test_waiting_stops_when_the_job_is_cancelled(tmp_path: Path) -> None:
    """A job waiting on another's claim stops at once when cancelled."""
    run = pins.RunPins(str(tmp_path))
    Path(run._path("q.io/x:1", ".claim")).write_text("busy")
    with pytest.raises(Terminated):
        run.resolve("q.io/x:1", lambda: DIGEST, LOG, give_up=lambda: True)


def test_no_digest_means_the_tag_is_run(tmp_path: Path) -> None:
    """A resolution that got no digest (an image built on the node) pins nothing: the tag."""
    run = pins.RunPins(str(tmp_path))
    run.resolve("q.io/x:1", lambda: "", LOG)
    assert run.resolve("q.io/x:1", lambda: DIGEST, LOG) == "q.io/x:1"
