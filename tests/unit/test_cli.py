"""The ``miniwdl-podman`` command line: subcommands, their help, version and exit statuses."""

from __future__ import annotations

import pytest

from miniwdl_podman import __version__, cli


def test_every_subcommand_has_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`COMMAND --help` describes that command and exits 0."""
    for command, words in (("doctor", "--cfg FILE"), ("pull", "inputs as NAME=VALUE"),
                           ("version", "Print the version"), ("node-run", "job file")):  # fmt: skip
        with pytest.raises(SystemExit) as exn:
            cli.main([command, "--help"])
        assert exn.value.code == 0
        assert words in capsys.readouterr().out


def test_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """--version and `version` print the package's version; an unknown command or no command
    is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exn:
        cli.main(["--version"])
    assert (
        exn.value.code == 0 and capsys.readouterr().out.strip() == f"miniwdl-podman {__version__}"
    )
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"miniwdl-podman {__version__}"
    for argv in (["bogus"], []):
        with pytest.raises(SystemExit) as exn:
            cli.main(argv)
        assert exn.value.code == 2


def test_doctor_takes_the_config_file_a_run_would_use() -> None:
    """`doctor --cfg FILE` parses to the file (as `miniwdl run --cfg`)."""
    args = cli.parser().parse_args(["doctor", "--cfg", "/x/miniwdl.cfg", "--json"])
    assert (args.cfg, args.json, args.fix) == ("/x/miniwdl.cfg", True, False)
