"""Settings: one declaration per option, one validation for every source, flag > env > stored."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.helpers import SECRET
from tests.process import run_cli
from vapi_bridge.errors import ConfigError
from vapi_bridge.settings import (
    DEFAULT_BASE_URL,
    LogFormat,
    Settings,
    from_json,
    home_dir,
    load,
    options,
    overlay,
    to_json,
    warnings,
)

HOME = Path("/tmp/vb-home")
KEY = "k" * 20


def test_flag_beats_environment_beats_stored_beats_default() -> None:
    stored = {"sambanova_api_key": "stored", "bridge_secret": "stored-secret-0123456789"}
    env = {"SAMBANOVA_API_KEY": "env", "VAPI_BRIDGE_SECRET": "env-secret-0123456789"}
    settings = load({"secret": "flag-secret-0123456789"}, env, stored, home=HOME)
    assert settings.secret == ("flag-secret-0123456789",)
    assert settings.api_key == "env"
    assert settings.base_url == DEFAULT_BASE_URL
    assert load({}, {}, stored, home=HOME).api_key == "stored"
    assert load({}, {}, stored, home=HOME).secret == ("stored-secret-0123456789",)
    assert load({}, {}, {}, home=HOME).api_key is None


def test_sdk_base_url_variable_is_honoured_after_ours() -> None:
    env = {"SAMBA_NOVA_BASE_URL": "http://sdk", "SAMBANOVA_BASE_URL": "http://ours"}
    assert load({}, env, {}, home=HOME).base_url == "http://ours"
    assert load({}, {"SAMBA_NOVA_BASE_URL": "http://sdk"}, {}, home=HOME).base_url == "http://sdk"


def test_empty_environment_values_do_not_count() -> None:
    loaded = load({}, {"SAMBANOVA_API_KEY": " "}, {"sambanova_api_key": "s"}, home=HOME)
    assert loaded.api_key == "s"


@pytest.mark.parametrize(
    ("flags", "env", "stored", "named"),
    [
        ({"secret": "abc"}, {}, {}, "--secret"),
        ({}, {"VAPI_BRIDGE_SECRET": "abc"}, {}, "VAPI_BRIDGE_SECRET"),
        ({}, {}, {"bridge_secret": "abc"}, "the stored 'bridge_secret'"),
        ({}, {"VAPI_BRIDGE_SECRET": "sixteen chars  but spaces"}, {}, "VAPI_BRIDGE_SECRET"),
        ({}, {"SAMBANOVA_BASE_URL": "not-a-url"}, {}, "SAMBANOVA_BASE_URL"),
        ({"base_url": "ftp://x"}, {}, {}, "--base-url"),
        ({"port": 70000}, {}, {}, "--port"),
        ({"log_format": "xml"}, {}, {}, "--log-format"),
        ({"hooks": ["nocolon"]}, {}, {}, "--hook"),
        ({"model_map": ["gpt-4o"]}, {}, {}, "--model-map"),
    ],
)
def test_every_source_goes_through_the_same_validation(
    flags: dict[str, object], env: dict[str, str], stored: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(flags, env, stored, home=HOME)
    assert caught.value.message.startswith(named)
    assert "abc" not in caught.value.message, "a secret is never repeated in an error"


def test_a_key_with_surrounding_spaces_is_the_key_itself() -> None:
    assert load({}, {"VAPI_BRIDGE_SECRET": f"  {SECRET}  "}, {}, home=HOME).secret == (SECRET,)


@pytest.mark.parametrize(
    "flags",
    [
        {"no_auth": True, "secret": SECRET},
        {"tunnel": False, "domain": "me.ngrok.app"},
        {"system_prompt": "Be brief.", "system_prompt_file": "p.txt"},
        {"demo": True, "base_url": "http://127.0.0.1:1/v1"},
    ],
)
def test_contradictory_flags_are_refused(flags: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="contradict"):
        load(flags, {}, {}, home=HOME)


def test_an_environment_value_never_contradicts_a_flag() -> None:
    loaded = load({"tunnel": False}, {"VAPI_BRIDGE_DOMAIN": "me.ngrok.app"}, {}, home=HOME)
    assert loaded.tunnel is False


def test_choices_are_enums_and_upstream_timeout_over_vapis_warns() -> None:
    loaded = load({"log_format": "JSON", "upstream_timeout": 25}, {}, {}, home=HOME)
    assert loaded.log_format is LogFormat.JSON
    assert any("Vapi" in w and "20" in w for w in warnings(loaded))
    assert warnings(load({}, {}, {}, home=HOME)) == []


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ({"system_prompt_mode": "append"}, "--system-prompt-mode append does nothing"),
        ({"public_url": "http://bridge.example.com"}, "plain http"),
    ],
)
def test_settings_that_would_do_nothing_or_leak_warn(flags: dict[str, str], says: str) -> None:
    assert any(says in w for w in warnings(load(flags, {}, {}, home=HOME)))
    fixed = {"system_prompt_mode": "append", "system_prompt": "Be brief."}
    assert warnings(load(fixed, {}, {}, home=HOME)) == []
    # Profiles that set a prompt inherit the mode: it does act.
    profiled = {"system_prompt_mode": "append", "profiles": "profiles.toml"}
    assert warnings(load(profiled, {}, {}, home=HOME)) == []
    assert warnings(load({"public_url": "https://bridge.example.com"}, {}, {}, home=HOME)) == []


def test_the_workers_json_round_trips_every_setting(tmp_path: Path) -> None:
    settings = load(
        {
            "model_map": ["a=b"],
            "hooks": ["m:f"],
            "transcript_dir": str(tmp_path),
            "log_format": "json",
            "stall_timeout": 3,
        },
        {"SAMBANOVA_API_KEY": KEY},
        {},
        home=tmp_path,
    )
    assert from_json(to_json(settings)) == settings


def test_a_profile_overlay_is_validated_like_everything_else() -> None:
    base = load({}, {}, {}, home=HOME)
    assert overlay(base, {"model": "gpt-oss-120b"}, "profile 'a'").model == "gpt-oss-120b"
    with pytest.raises(ConfigError, match="profile 'a': stall_timeout"):
        overlay(base, {"stall_timeout": "soon"}, "profile 'a'")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        overlay(base, {"colour": "blue"}, "profile 'a'")


def test_every_flag_option_is_declared_once_with_help() -> None:
    flags = [spec.flag for _, spec in options() if spec.flag]
    assert len(flags) == len(set(flags))
    assert all(spec.help for _, spec in options() if spec.flag)
    names = {f.name for f in dataclasses.fields(Settings)}
    assert {f.name for f, _ in options()} <= names


def test_home_override_and_platform_default(tmp_path: Path) -> None:
    assert home_dir({"VAPI_BRIDGE_HOME": str(tmp_path)}) == tmp_path
    assert home_dir({}).name in ("vapi-bridge", "Vapi-Bridge")


def test_settings_repr_hides_secrets() -> None:
    settings = load({}, {"SAMBANOVA_API_KEY": "sk-very-secret"}, {}, home=HOME)
    assert "sk-very-secret" not in repr(settings)


def test_serve_help_groups_options_and_names_the_key_variables() -> None:
    result = run_cli("serve", "-h")
    assert result.returncode == 0
    for heading in ("Vapi and auth:", "Upstream (SambaNova):", "Tunnel (ngrok):", "Server:"):
        assert heading in result.stdout
    for text in ("SAMBANOVA_API_KEY", "NGROK_AUTHTOKEN", "<text|json>", "--stall-timeout"):
        assert text in result.stdout
    assert "list[str]" not in result.stdout and "int range" not in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--no-auth", "--secret", SECRET], {}, "contradict"),
        (["--no-tunnel", "--domain", "me.ngrok.app"], {}, "contradict"),
        (["--no-tunnel"], {"VAPI_BRIDGE_SECRET": "abc"}, "VAPI_BRIDGE_SECRET"),
        (["--no-tunnel", "--system-prompt-file", "{binary}"], {}, "not UTF-8"),
        (["--no-tunnel", "--transcript-dir", "{file}/sub"], {}, "Cannot write transcripts"),
    ],
)
def test_serve_misuse_is_one_clear_line(
    tmp_path: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    binary, plain = tmp_path / "prompt.bin", tmp_path / "file"
    binary.write_bytes("Be brief.".encode("utf-16"))
    plain.write_text("not a folder")
    args = [a.format(binary=binary, file=plain) for a in args]
    result = run_cli("serve", "--demo", "--port", "0", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_contradictions_outside_serve_are_refused_too() -> None:
    both = run_cli("test", "--public", "--url", "http://127.0.0.1:1")
    assert both.returncode == 2 and "contradict" in both.stderr
    assert run_cli("-V").stdout.startswith("vapi-bridge ")
    assert "Commands:" in run_cli("-h").stdout
