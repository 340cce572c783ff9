from __future__ import annotations

from pathlib import Path

import pytest

from forge.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("FORGE_"):
            monkeypatch.delenv(key)
    # `load_settings(path)` sets FORGE_CONFIG for the process: recorded here so that it is
    # undone after the test, or every later `Settings()` of the run would read its file.
    monkeypatch.setenv("FORGE_CONFIG", "")
    monkeypatch.delenv("FORGE_CONFIG")


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGE_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8887)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'forge.db'}"
    assert settings.worktree_base == tmp_path / "worktrees"
    assert settings.profiles["default"].command == "cat"


def test_toml_file_then_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "forge.toml"
    config.write_text(
        '[server]\nport = 9000\nhost = "0.0.0.0"\n'
        "[sessions]\nmax_concurrent = 3\ntimeout_seconds = 60\n"
        '[worktrees]\nbase_path = "/srv/wt"\n'
        '[profiles.lint]\nexecutor = "command"\ncommand = "ruff check ."\n'
    )
    monkeypatch.setenv("FORGE_SERVER__PORT", "9100")
    settings = load_settings(config)
    assert settings.server.port == 9100
    assert settings.server.host == "0.0.0.0"
    assert settings.sessions.max_concurrent == 3 and settings.sessions.timeout_seconds == 60
    assert settings.worktree_base == Path("/srv/wt")
    assert settings.profiles["lint"].command == "ruff check ."
    assert "default" in settings.profiles
    assert settings.base_url == "http://127.0.0.1:9100"


def test_forge_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "other.toml"
    config.write_text("[server]\nport = 9200\n")
    monkeypatch.setenv("FORGE_CONFIG", str(config))
    assert load_settings().server.port == 9200


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[profiles.x]\nexecutor = "command"\ncommand = ""\n')
    with pytest.raises(ConfigError, match="non-empty `command`"):
        load_settings(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[sever]\nport = 1\n")
    with pytest.raises(ConfigError, match="sever"):
        load_settings(typo)


def test_database_urls_get_forges_async_driver(tmp_path: Path) -> None:
    config = tmp_path / "forge.toml"
    config.write_text(
        '[database]\nurl = "postgres://forge:s%40cret@db.internal:5432/forge"\n'
        "pool_size = 20\nmax_lifetime_seconds = 600\n"
    )
    settings = load_settings(config)
    assert settings.database_url == "postgresql+asyncpg://forge:s%40cret@db.internal:5432/forge"
    assert (settings.database.pool_size, settings.database.max_lifetime_seconds) == (20, 600)
    assert settings.database.pool_timeout_seconds == 30


def test_an_unknown_database_scheme_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "forge.toml"
    config.write_text('[database]\nurl = "mysql://forge@db/forge"\n')
    with pytest.raises(ConfigError, match="unsupported database URL scheme 'mysql'"):
        load_settings(config)
