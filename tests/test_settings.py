"""Where each setting comes from: flag > environment > stored > default."""

from __future__ import annotations

from pathlib import Path

from vapi_bridge.settings import DEFAULT_BASE_URL, home_dir, resolve

HOME = Path("/tmp/vb-home")


def test_flag_beats_environment_beats_stored_beats_default() -> None:
    stored = {"sambanova_api_key": "stored", "bridge_secret": "stored-secret"}
    env = {"SAMBANOVA_API_KEY": "env", "VAPI_BRIDGE_SECRET": "env-secret"}
    flags = {"home": HOME, "secret": "flag-secret", "base_url": None}
    settings = resolve(flags, env, stored)
    assert settings.secret == "flag-secret"
    assert settings.api_key == "env"
    assert settings.base_url == DEFAULT_BASE_URL
    assert resolve({"home": HOME}, {}, stored).api_key == "stored"
    assert resolve({"home": HOME}, {}, stored).secret == "stored-secret"
    assert resolve({"home": HOME}, {}, {}).api_key is None


def test_sdk_base_url_variable_is_honoured_after_ours() -> None:
    env = {"SAMBA_NOVA_BASE_URL": "http://sdk", "SAMBANOVA_BASE_URL": "http://ours"}
    assert resolve({"home": HOME}, env, {}).base_url == "http://ours"
    assert resolve({"home": HOME}, {"SAMBA_NOVA_BASE_URL": "http://sdk"}, {}).base_url == (
        "http://sdk"
    )


def test_empty_environment_values_do_not_count() -> None:
    assert (
        resolve({"home": HOME}, {"SAMBANOVA_API_KEY": ""}, {"sambanova_api_key": "s"}).api_key
        == "s"
    )


def test_home_override_and_platform_default(tmp_path: Path) -> None:
    assert home_dir({"VAPI_BRIDGE_HOME": str(tmp_path)}) == tmp_path
    assert home_dir({}).name in ("vapi-bridge", "Vapi-Bridge")


def test_settings_repr_hides_secrets() -> None:
    settings = resolve({"home": HOME}, {"SAMBANOVA_API_KEY": "sk-very-secret"}, {})
    assert "sk-very-secret" not in repr(settings)
