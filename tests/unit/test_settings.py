"""Settings: defaults, validation and reading through miniwdl's real config loader."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from WDL.runtime import config

from miniwdl_podman import settings
from miniwdl_podman.errors import ConfigError


def test_defaults_are_documented_and_match_the_dataclass() -> None:
    """Every option has a default that parses to the dataclass's own default."""
    parsed = settings.from_mapping({})
    assert parsed == settings.Settings()
    assert set(settings.DEFAULTS) <= set(settings.Settings.__dataclass_fields__)


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("service", "sometimes", "choose one of auto, private, external"),
        ("pull", "if-needed", "choose one of missing, always, never"),
        ("api_timeout", "-3", "positive number of seconds"),
        ("service_start_timeout", "soon", "positive number of seconds"),
        ("wait_interval", "20", "duration such as 20ms"),
        ("init", "maybe", "expected true or false"),
        ("gpu_concurrency", "-1", "expected a whole number >= 0"),
        ("gpu_concurrency", "two", "expected a whole number >= 0"),
        ("shared_store", "images/shared", "expected an absolute path"),
    ],
)
def test_invalid_values_name_option_and_env_var(option: str, value: str, needle: str) -> None:
    """An invalid value raises ConfigError naming the option, the bad value and the env var."""
    with pytest.raises(ConfigError) as info:
        settings.from_mapping({option: value})
    msg = str(info.value)
    assert f"[podman_rootless] {option} = {value!r}" in msg
    assert needle in msg
    assert f"MINIWDL__PODMAN_ROOTLESS__{option.upper()}" in msg


def test_load_reads_config_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load() honours the config file, env overrides it, and miniwdl's command_shell is read."""
    cfg_file = tmp_path / "my.cfg"
    cfg_file.write_text(
        "[podman_rootless]\npull = never\nnetwork = none\n[task_runtime]\ncommand_shell = /bin/sh\n"
    )
    monkeypatch.setenv("MINIWDL__PODMAN_ROOTLESS__WAIT_INTERVAL", "50ms")
    cfg = config.Loader(logging.getLogger("test"), [str(cfg_file)])
    s = settings.load(cfg)
    assert s.pull == "never"
    assert s.network == "none"
    assert s.wait_interval == "50ms"
    assert s.command_shell == "/bin/sh"
    assert s.service == "auto"


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after loading."""
    s = settings.Settings()
    with pytest.raises(AttributeError):
        s.pull = "always"  # type: ignore[misc]


def test_example_config_documents_every_option_with_its_default() -> None:
    """contrib/podman_rootless.cfg lists each option of both sections, with its default and
    its environment variable."""
    import configparser
    from pathlib import Path

    path = Path(__file__).parents[2] / "contrib" / "podman_rootless.cfg"
    text = path.read_text()
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    for section, defaults in (
        (settings.SECTION, settings.DEFAULTS),
        (settings.SLURM_SECTION, settings.SLURM_DEFAULTS),
    ):
        for key, (default, _) in defaults.items():
            assert parser.get(section, key) == default, (section, key)
            assert f"MINIWDL__{section.upper()}__{key.upper()}" in text


@pytest.mark.parametrize(
    ("text", "value"), [("20ms", 0.02), ("1.5s", 1.5), ("500us", 0.0005), ("2m", 120.0)]
)
def test_durations_are_read_in_seconds(text: str, value: float) -> None:
    """Go-style durations, as wait_interval takes them, convert to seconds."""
    assert settings.seconds(text) == pytest.approx(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("T", True), ("y", True), ("YES", True), ("1", True), ("on", True),
     ("false", False), ("f", False), ("N", False), ("no", False), ("0", False), ("off", False)],
)  # fmt: skip
def test_booleans_in_every_spelling_miniwdls_loader_takes(value: str, expected: bool) -> None:
    """A boolean that works in [scheduler] (miniwdl's get_bool) works in [podman_rootless]."""
    assert settings.from_mapping({"coordinate": value}).coordinate is expected
    if value.lower() not in ("on", "off"):  # ours takes on/off too; miniwdl's does not
        assert config._parse_bool(value.lower()) is expected


def test_lists_in_every_form_miniwdls_loader_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON list, or (as miniwdl's get_list) one bare value; read through the real loader from
    a config file and from the environment."""
    cfg_file = tmp_path / "my.cfg"
    cfg_file.write_text(
        '[podman_rootless]\nallow_networks = ["a", "b"]\nservice_args = --log-level=info\n'
    )
    monkeypatch.setenv("MINIWDL__PODMAN_ROOTLESS__GPU_DEVICES", "vendor.com/gpu=0")
    s = settings.load(config.Loader(logging.getLogger("test"), [str(cfg_file)]))
    assert s.allow_networks == ("a", "b")
    assert s.service_args == ("--log-level=info",)
    assert s.gpu_devices == ("vendor.com/gpu=0",)
    assert settings.from_mapping({"allow_networks": ""}).allow_networks == ()
    with pytest.raises(ConfigError):
        settings.from_mapping({"allow_networks": "[1, 2]"})  # a list, but not of strings
