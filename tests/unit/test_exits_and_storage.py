"""The one memory-kill explainer (local and Slurm terms) and the storage judgement."""

from __future__ import annotations

from miniwdl_podman import exits, storage


def test_slurm_memory_context_names_the_job_and_its_mem() -> None:
    """Under Slurm the bound is the job's --mem; the fix is runtime.memory, not the multiplier."""
    memory = exits.MemoryContext(512 << 20, slurm_job="42")
    msg = exits.explain_kill(137, True, memory)
    assert msg is not None and "Slurm job 42" in msg and "--mem 512 MiB" in msg
    assert "multiplier" not in msg
    assert "exceeding its memory (--mem 512 MiB" in exits.job_out_of_memory(memory, "Slurm job 42")


def test_storage_judgement() -> None:
    """NFS storage is severe, tmpfs a warning, vfs a driver warning; local overlay is fine."""
    kinds = {"/nfs/g": "nfs4", "/tmp/g": "tmpfs", "/var/g": "ext4", "/run/r": "tmpfs"}
    nfs = storage.judge("/nfs/g", "/run/r", "overlay", kinds.__getitem__)
    assert [(f.topic, f.severe) for f in nfs] == [("location", True)]
    assert "nfs4" in nfs[0].problem and "doctor --fix" in nfs[0].fix
    tmp = storage.judge("/tmp/g", "/run/r", "vfs", kinds.__getitem__)
    assert [(f.topic, f.severe) for f in tmp] == [("location", False), ("driver", False)]
    assert storage.judge("/var/g", "/run/r", "overlay", kinds.__getitem__) == []
