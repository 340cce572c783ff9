"""The profile catalog: agent files, the built-in default, variants and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge.config import AgentFileSettings, Settings
from forge.core.errors import InvalidRequest
from forge.core.profiles import ProfileCatalog, ProfileError, parse_agent_file


def catalog(tmp_path: Path, files: dict[str, str], **settings: object) -> ProfileCatalog:
    folder = tmp_path / "agents"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return ProfileCatalog(
        Settings(data_dir=tmp_path, agent_files=AgentFileSettings(dir=str(folder)), **settings)
    )


def test_a_broken_agent_file_is_skipped_and_the_others_load(tmp_path: Path) -> None:
    found = catalog(
        tmp_path,
        {
            "typo.md": "---\nexecutor: claude-code\n---\nhi\n",
            "badmode.md": "---\nexecutor: forge\npermission_mode: sometimes\n---\n",
            "nofront.md": "just text\n",
            "good.md": "---\nexecutor: opencode\nmodel: m1\n---\nBe brief.\n",
        },
    )
    assert found.names() == ["default", "good"]
    good = found.get("good")
    assert (good.executor, good.model, good.append_prompt) == ("opencode", "m1", "Be brief.")


def test_an_agent_file_may_define_default_but_forge_toml_wins_over_files(tmp_path: Path) -> None:
    files = {
        "default.md": "---\nexecutor: forge\nmodel: local\n---\n",
        "shared.md": "---\nexecutor: forge\n---\n",
    }
    found = catalog(
        tmp_path, files, profiles={"shared": {"executor": "command", "command": "true"}}
    )
    assert (found.get("default").executor, found.get("default").model) == ("forge", "local")
    assert found.get("shared").executor == "command"
    assert catalog(tmp_path / "empty", {}).get("default").command == "cat"


def test_variants_and_their_errors(tmp_path: Path) -> None:
    found = catalog(
        tmp_path,
        {},
        executors={"CLAUDE_CODE": {"PLAN": {"permission_mode": "ask", "model": "opus"}}},
        profiles={"planner": {"executor": "claude_code", "variant": "plan", "model": "sonnet"}},
    )
    planner = found.get("planner")
    assert (planner.variant, planner.permission_mode, planner.model) == ("PLAN", "ask", "sonnet")
    assert found.for_executor("claude_code", "plan").model == "opus"
    assert found.variants("claude_code") == ["DEFAULT", "PLAN"]
    with pytest.raises(InvalidRequest, match="variants: DEFAULT, PLAN"):
        found.for_executor("claude_code", "fast")
    with pytest.raises(InvalidRequest, match=r"executors: .*claude_code.*opencode"):
        found.for_executor("cursor", None)
    with pytest.raises(ProfileError, match="unknown executor 'cursor'"):
        catalog(tmp_path, {}, profiles={"x": {"executor": "cursor", "command": "a"}})


def test_agent_file_front_matter_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown front matter keys"):
        parse_agent_file("---\nexecutor: forge\ncolour: red\n---\n", "x")
    with pytest.raises(ValueError, match="needs `executor`"):
        parse_agent_file("---\nname: x\n---\n", "x")
    with pytest.raises(ValueError, match="no closing"):
        parse_agent_file("---\nexecutor: forge\n", "x")
