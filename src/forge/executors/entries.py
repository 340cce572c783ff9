"""Builders for normalized entries (DESIGN.md, "Event envelope"), shared by every adapter.

Every executor turns its own events into these few shapes, so the dashboard, transcripts and
neurons read one schema whatever ran. Builders leave out what is unknown instead of writing
nulls.
"""

from __future__ import annotations

from typing import Any, Literal

from forge.core.events import Usage

ToolAction = Literal[
    "file_read",
    "file_edit",
    "command_run",
    "search",
    "web_fetch",
    "task",
    "todo",
    "mcp",
    "other",
]
ToolStatus = Literal["running", "success", "failed", "denied", "pending_approval"]

# Tool names of the agents Forge runs (lower-cased), by what they do.
_ACTIONS: dict[str, ToolAction] = {
    **dict.fromkeys(
        ("read", "read_file", "view", "notebookread", "read_many_files", "cat"), "file_read"
    ),
    **dict.fromkeys(
        (
            "write",
            "write_file",
            "edit",
            "multiedit",
            "notebookedit",
            "replace",
            "apply_patch",
            "patch",
            "str_replace",
            "create_file",
            "edit_file",
        ),
        "file_edit",
    ),
    **dict.fromkeys(
        (
            "bash",
            "shell",
            "run_shell_command",
            "exec_command",
            "local_shell",
            "command",
            "run_command",
            "command_execution",
            "monitor",
        ),
        "command_run",
    ),
    **dict.fromkeys(
        (
            "grep",
            "glob",
            "ls",
            "list",
            "list_directory",
            "list_dir",
            "search_file_content",
            "grep_search",
            "codesearch",
            "websearch",
            "google_web_search",
            "web_search",
        ),
        "search",
    ),
    **dict.fromkeys(("webfetch", "web_fetch", "fetch"), "web_fetch"),
    **dict.fromkeys(("task", "agent", "taskstop", "invoke_agent"), "task"),
    **dict.fromkeys(("todowrite", "todoread", "write_todos", "todo_list", "update_plan"), "todo"),
    # Claude Code's task list (its todo list since TodoWrite was replaced).
    **dict.fromkeys(("taskcreate", "taskupdate", "tasklist", "taskget"), "todo"),
}


def tool_action(tool: str) -> ToolAction:
    """What a tool of this name does; `mcp` for MCP tools (`mcp__server__tool`), else `other`."""
    name = tool.strip().lower()
    if name.startswith("mcp__") or name.startswith("mcp_"):
        return "mcp"
    return _ACTIONS.get(name, "other")


def _compact(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if value is not None and value != ""}


def user_message(text: str) -> dict[str, Any]:
    return {"kind": "user_message", "text": text}


def assistant_message(text: str, **extra: Any) -> dict[str, Any]:
    return _compact({"kind": "assistant_message", "text": text, **extra})


def thinking(text: str) -> dict[str, Any]:
    return {"kind": "thinking", "text": text}


def tool_call(
    tool: str,
    status: ToolStatus,
    *,
    tool_call_id: str | None = None,
    action: ToolAction | None = None,
    input: Any = None,
    output: Any = None,
    detail: str | None = None,
    path: str | None = None,
    command: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A tool call: `running` when it starts, then `success`, `failed` or `denied`.

    `detail` is a one-line summary for lists (the command, the path, the pattern).
    """
    return _compact(
        {
            "kind": "tool_call",
            "tool": tool,
            "action": action or tool_action(tool),
            "status": status,
            "tool_call_id": tool_call_id,
            "detail": detail,
            "path": path,
            "command": command,
            "input": input,
            "output": output,
            "error": error,
        }
    )


def permission_request(
    permission_id: str,
    tool: str,
    *,
    detail: str | None = None,
    input: Any = None,
    action: ToolAction | None = None,
    tool_call_id: str | None = None,
    timeout_seconds: float | None = None,
) -> dict[str, Any]:
    """The agent waits for `POST /api/v1/agents/{id}/permissions/{permission_id}`."""
    return _compact(
        {
            "kind": "permission_request",
            "permission_id": permission_id,
            "tool": tool,
            "action": action or tool_action(tool),
            "detail": detail,
            "input": input,
            "tool_call_id": tool_call_id,
            "timeout_seconds": timeout_seconds,
        }
    )


def todo(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The agent's todo list; each item has `content` and `status` (pending, in_progress, ...)."""
    return {"kind": "todo", "items": items}


def usage(value: Usage, **extra: Any) -> dict[str, Any]:
    return {"kind": "usage", **value.model_dump(), **extra}


def system(text: str, **extra: Any) -> dict[str, Any]:
    return _compact({"kind": "system", "text": text, **extra})


def error(message: str, *, code: str | None = None, **extra: Any) -> dict[str, Any]:
    return _compact({"kind": "error", "message": message, "code": code, **extra})
