"""The built-in agent's tools, all confined to the workspace.

`WorkspaceTools.call` runs one tool call and returns what the model sees. A path that resolves
outside the workspace (also through a symlink), a missing argument, an edit whose old text is
missing or not unique: these come back as a failed `ToolResult` with a message the model can
act on, never as an exception. `run_command` runs `bash -c` in the workspace in its own process
group; when it ends, times out or is cancelled (an interrupt), the whole group is killed.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import re
import shutil
import signal
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forge.executors.process import describe_exit, kill_group, signal_group

logger = logging.getLogger(__name__)

# Tools that change files, and tools that run commands (what permission modes ask about).
EDIT_TOOLS = frozenset({"write_file", "edit_file"})
COMMAND_TOOLS = frozenset({"run_command"})

DEFAULT_MAX_OUTPUT_CHARS = 30_000
DEFAULT_COMMAND_TIMEOUT = 120.0
MAX_COMMAND_TIMEOUT = 3600.0
_READ_LIMIT_LINES = 2000
_GLOB_LIMIT = 500
_GREP_LIMIT = 200
_GREP_MAX_FILE_BYTES = 5 * 1024 * 1024
_GREP_LINE_CHARS = 300
_LIST_LIMIT = 1000
# How long a command's output may stay open after its process group is gone (only a process
# that left the group can hold it).
_DRAIN_SECONDS = 2.0
# How long a cancelled command gets after SIGTERM before SIGKILL, at most.
_MAX_GRACE_SECONDS = 10.0
_SKIPPED_DIRS = frozenset({".git"})


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


def _function(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


_PATH = {"type": "string", "description": "Path relative to the workspace root."}

TOOL_DEFINITIONS: list[dict[str, Any]] = [
    _function(
        "read_file",
        "Read a text file. Lines are numbered from 1; use offset and limit for long files.",
        _schema(
            {
                "path": _PATH,
                "offset": {"type": "integer", "description": "First line to read (1-based)."},
                "limit": {"type": "integer", "description": "How many lines to read."},
            },
            ["path"],
        ),
    ),
    _function(
        "write_file",
        "Create or overwrite a file with the given content (parent directories are created).",
        _schema({"path": _PATH, "content": {"type": "string"}}, ["path", "content"]),
    ),
    _function(
        "edit_file",
        "Replace one exact occurrence of old_string with new_string in a file. old_string must "
        "match the file exactly (whitespace included) and occur exactly once.",
        _schema(
            {"path": _PATH, "old_string": {"type": "string"}, "new_string": {"type": "string"}},
            ["path", "old_string", "new_string"],
        ),
    ),
    _function(
        "run_command",
        "Run a shell command with bash in the workspace root and return its combined output "
        "and exit code.",
        _schema(
            {
                "command": {"type": "string"},
                "timeout": {"type": "number", "description": "Seconds before it is killed."},
            },
            ["command"],
        ),
    ),
    _function(
        "glob",
        "Find files whose path matches a glob pattern such as '**/*.py'.",
        _schema(
            {"pattern": {"type": "string"}, "path": {**_PATH, "description": "Where to look."}},
            ["pattern"],
        ),
    ),
    _function(
        "grep",
        "Search file contents with a Python regular expression; returns path:line: text.",
        _schema(
            {
                "pattern": {"type": "string"},
                "path": {**_PATH, "description": "File or directory to search (default: all)."},
                "include": {"type": "string", "description": "Only files matching this glob."},
                "ignore_case": {"type": "boolean"},
            },
            ["pattern"],
        ),
    ),
    _function(
        "list_dir",
        "List a directory's entries (directories end with '/').",
        _schema({"path": _PATH}, []),
    ),
]
TOOL_NAMES = frozenset(d["function"]["name"] for d in TOOL_DEFINITIONS)


@dataclass(frozen=True)
class ToolResult:
    """What a tool call gave: `output` is the text the model sees."""

    ok: bool
    output: str


class ToolRefused(Exception):
    """A tool call that cannot be carried out; the message goes to the model."""


def truncate(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters, keeping its start and end, with a note."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n[... {omitted} characters truncated ...]\n{text[len(text) - tail :]}"


@dataclass(frozen=True)
class ToolSummary:
    """What a tool call is about, for its entries: the file, the command, a one-line detail."""

    path: str | None = None
    command: str | None = None
    detail: str | None = None


def describe(name: str, arguments: Mapping[str, Any]) -> ToolSummary:
    """The file, command or pattern a tool call is about."""
    if name in ("read_file", "write_file", "edit_file", "list_dir"):
        path = arguments.get("path")
        path = path if isinstance(path, str) else ("." if name == "list_dir" else None)
        return ToolSummary(path=path, detail=path)
    if name == "run_command":
        command = arguments.get("command")
        if isinstance(command, str):
            return ToolSummary(command=command, detail=command)
    if name in ("glob", "grep"):
        pattern = arguments.get("pattern")
        return ToolSummary(detail=pattern if isinstance(pattern, str) else None)
    return ToolSummary()


class WorkspaceTools:
    """The tools of one run, working in `workspace`."""

    def __init__(
        self,
        workspace: Path,
        *,
        env: Mapping[str, str],
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> None:
        self.root = workspace.resolve()
        self.env = dict(env)
        self.max_output_chars = max_output_chars
        self.command_timeout = command_timeout
        # Seconds a cancelled command gets between SIGTERM and SIGKILL (set on interrupt).
        self.grace_seconds = 0.0
        self.shell = shutil.which("bash", path=self.env.get("PATH")) or "/bin/sh"

    async def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Run one tool call; refusals and errors come back as a failed result."""
        try:
            if name == "run_command":
                result = await self._run_command(arguments)
            else:
                handler = _FILE_TOOLS.get(name)
                if handler is None:
                    known = ", ".join(sorted(TOOL_NAMES))
                    raise ToolRefused(f"unknown tool {name!r}; the tools are: {known}")
                result = await asyncio.to_thread(handler, self, arguments)
        except ToolRefused as exc:
            result = ToolResult(False, f"Error: {exc}")
        except OSError as exc:
            result = ToolResult(False, f"Error: {exc.strerror or exc}")
        except Exception as exc:  # a tool's bug must not end the run
            logger.exception("the %s tool failed", name)
            result = ToolResult(False, f"Error: {type(exc).__name__}: {exc}")
        return ToolResult(result.ok, truncate(result.output, self.max_output_chars))

    # ---- paths ---------------------------------------------------------------------------------

    def resolve(self, path: str) -> Path:
        """The real path `path` names, which must be inside the workspace (symlinks followed)."""
        if "\x00" in path:
            raise ToolRefused("the path contains a NUL character")
        candidate = Path(path)
        full = candidate if candidate.is_absolute() else self.root / candidate
        resolved = full.resolve()
        if not resolved.is_relative_to(self.root):
            raise ToolRefused(f"{path!r} is outside the workspace ({self.root}); access refused")
        return resolved

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path != self.root else "."

    # ---- file tools (run in a thread) ----------------------------------------------------------

    def _read_file(self, arguments: Mapping[str, Any]) -> ToolResult:
        path = self.resolve(_string(arguments, "path"))
        offset = max(1, _integer(arguments, "offset", 1))
        limit = max(1, _integer(arguments, "limit", _READ_LIMIT_LINES))
        if path.is_dir():
            raise ToolRefused(f"{self.relative(path)} is a directory; use list_dir")
        with path.open("rb") as file:
            if b"\x00" in file.read(8192):
                size = path.stat().st_size
                return ToolResult(True, f"{self.relative(path)} is a binary file ({size} bytes)")
        lines: list[str] = []
        total = 0
        with path.open(encoding="utf-8", errors="replace", newline="") as file:
            for number, line in enumerate(file, start=1):
                total = number
                if offset <= number < offset + limit:
                    lines.append(f"{number:6}\t{line.rstrip(chr(10)).rstrip(chr(13))}")
        if not lines:
            return ToolResult(True, f"(no lines at offset {offset}; the file has {total} lines)")
        text = "\n".join(lines)
        last = offset + len(lines) - 1
        if offset > 1 or last < total:
            text += f"\n[lines {offset}-{last} of {total}; use offset and limit to read more]"
        return ToolResult(True, text)

    def _write_file(self, arguments: Mapping[str, Any]) -> ToolResult:
        path = self.resolve(_string(arguments, "path"))
        content = _string(arguments, "content", allow_empty=True)
        if path.is_dir():
            raise ToolRefused(f"{self.relative(path)} is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode()
        path.write_bytes(data)
        return ToolResult(True, f"Wrote {len(data)} bytes to {self.relative(path)}")

    def _edit_file(self, arguments: Mapping[str, Any]) -> ToolResult:
        path = self.resolve(_string(arguments, "path"))
        old = _string(arguments, "old_string")
        new = _string(arguments, "new_string", allow_empty=True)
        if not path.is_file():
            raise ToolRefused(f"{self.relative(path)} does not exist or is not a file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ToolRefused(f"{self.relative(path)} is not UTF-8 text; use write_file") from exc
        count = text.count(old)
        if count == 0:
            raise ToolRefused(
                f"old_string was not found in {self.relative(path)}; read the file and copy "
                "the text exactly, whitespace included"
            )
        if count > 1:
            raise ToolRefused(
                f"old_string occurs {count} times in {self.relative(path)}; include more "
                "surrounding text so that it occurs exactly once"
            )
        path.write_text(text.replace(old, new, 1), encoding="utf-8")
        return ToolResult(True, f"Edited {self.relative(path)}")

    def _glob(self, arguments: Mapping[str, Any]) -> ToolResult:
        pattern = _string(arguments, "pattern")
        base = self.resolve(_optional_string(arguments, "path") or ".")
        if Path(pattern).is_absolute():
            raise ToolRefused("the pattern must be relative (use path for the directory)")
        found: list[str] = []
        try:
            for match in base.glob(pattern):
                if _SKIPPED_DIRS.intersection(match.relative_to(base).parts):
                    continue
                if not match.resolve().is_relative_to(self.root):
                    continue
                found.append(self.relative(match))
                if len(found) > _GLOB_LIMIT:
                    break
        except (ValueError, NotImplementedError) as exc:
            raise ToolRefused(f"invalid glob pattern {pattern!r}: {exc}") from exc
        if not found:
            return ToolResult(True, "No files matched.")
        found.sort()
        text = "\n".join(found[:_GLOB_LIMIT])
        if len(found) > _GLOB_LIMIT:
            text += f"\n[more than {_GLOB_LIMIT} matches; use a narrower pattern]"
        return ToolResult(True, text)

    def _grep(self, arguments: Mapping[str, Any]) -> ToolResult:
        pattern = _string(arguments, "pattern")
        base = self.resolve(_optional_string(arguments, "path") or ".")
        include = _optional_string(arguments, "include")
        flags = re.IGNORECASE if arguments.get("ignore_case") is True else 0
        try:
            regex = re.compile(pattern, flags)
        except re.error as exc:
            raise ToolRefused(f"invalid regular expression {pattern!r}: {exc}") from exc
        matches: list[str] = []
        for path in self._files_under(base):
            if include and not fnmatch.fnmatch(path.name, include):
                continue
            for number, line in _text_lines(path):
                if regex.search(line):
                    shown = line if len(line) <= _GREP_LINE_CHARS else line[:_GREP_LINE_CHARS]
                    matches.append(f"{self.relative(path)}:{number}: {shown}")
                    if len(matches) > _GREP_LIMIT:
                        text = "\n".join(matches[:_GREP_LIMIT])
                        return ToolResult(
                            True, f"{text}\n[more than {_GREP_LIMIT} matches; narrow the search]"
                        )
        return ToolResult(True, "\n".join(matches) if matches else "No matches.")

    def _files_under(self, base: Path) -> list[Path]:
        if base.is_file():
            return [base]
        files: list[Path] = []
        for directory, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
            for name in sorted(filenames):
                path = Path(directory, name)
                # A symlink may point outside the workspace: its target is not read.
                if path.is_symlink() and not path.resolve().is_relative_to(self.root):
                    continue
                files.append(path)
        return files

    def _list_dir(self, arguments: Mapping[str, Any]) -> ToolResult:
        path = self.resolve(_optional_string(arguments, "path") or ".")
        if not path.is_dir():
            raise ToolRefused(f"{self.relative(path)} is not a directory")
        names = sorted(
            entry.name + ("/" if entry.is_dir() else "")
            for entry in os.scandir(path)
            if entry.name not in _SKIPPED_DIRS
        )
        if not names:
            return ToolResult(True, "(empty directory)")
        text = "\n".join(names[:_LIST_LIMIT])
        if len(names) > _LIST_LIMIT:
            text += f"\n[{len(names) - _LIST_LIMIT} more entries]"
        return ToolResult(True, text)

    # ---- commands ------------------------------------------------------------------------------

    async def _run_command(self, arguments: Mapping[str, Any]) -> ToolResult:
        command = _string(arguments, "command")
        timeout = arguments.get("timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
            seconds = min(float(timeout), MAX_COMMAND_TIMEOUT)
        else:
            seconds = self.command_timeout
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: asyncio.subprocess.SubprocessStreamProtocol(limit=2**16, loop=loop),
            self.shell,
            "-c",
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.root,
            env=self.env,
            # Its own process group, so the command and all it starts are killed as one.
            process_group=0,
        )
        pgid = transport.get_pid()
        assert protocol.stdout is not None
        capture = _OutputCapture(self.max_output_chars)
        reader = asyncio.create_task(capture.read(protocol.stdout))
        timed_out = False
        try:
            if not await _wait_exit(transport, seconds):
                timed_out = True
                signal_group(pgid, signal.SIGKILL)
                await _wait_exit(transport, _DRAIN_SECONDS)
            # Whatever the command left running in its group goes with it.
            await kill_group(pgid)
            try:
                await asyncio.wait_for(asyncio.shield(reader), _DRAIN_SECONDS)
            except TimeoutError:
                capture.note("[output still held open by a process outside the command; cut]")
        except asyncio.CancelledError:
            await self._stop_group(pgid, transport)
            raise
        finally:
            reader.cancel()
            transport.close()
        returncode = transport.get_returncode()
        output = capture.text() or "(no output)"
        if timed_out:
            return ToolResult(False, f"{output}\n[timed out after {seconds:g} s; killed]")
        how = describe_exit(returncode if returncode is not None else -1)
        return ToolResult(returncode == 0, f"{output}\n[the command {how}]")

    async def _stop_group(self, pgid: int, transport: asyncio.SubprocessTransport) -> None:
        """SIGTERM the command's group, SIGKILL after the grace period, wait until it is gone."""
        grace = min(max(self.grace_seconds, 0.0), _MAX_GRACE_SECONDS)
        if grace > 0 and signal_group(pgid, signal.SIGTERM):
            await _wait_exit(transport, grace)
        signal_group(pgid, signal.SIGKILL)
        await _wait_exit(transport, _DRAIN_SECONDS)
        await kill_group(pgid)


_FILE_TOOLS = {
    "read_file": WorkspaceTools._read_file,
    "write_file": WorkspaceTools._write_file,
    "edit_file": WorkspaceTools._edit_file,
    "glob": WorkspaceTools._glob,
    "grep": WorkspaceTools._grep,
    "list_dir": WorkspaceTools._list_dir,
}


async def _wait_exit(transport: asyncio.SubprocessTransport, seconds: float) -> bool:
    """Wait up to `seconds` for the process to exit; whether it did.

    `Process.wait()` also waits for the output pipe, which a leftover child can hold open; the
    return code is set as soon as the process itself has exited.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while transport.get_returncode() is None:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


class _OutputCapture:
    """Keeps the start and the end of a command's output, bounded, and counts the rest."""

    def __init__(self, limit_chars: int) -> None:
        self.limit = max(limit_chars, 1024)
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.omitted = 0
        self.notes: list[str] = []

    async def read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            room = self.limit - len(self.head)
            if room > 0:
                self.head += chunk[:room]
                chunk = chunk[room:]
            if chunk:
                self.tail.append(chunk)
                self.tail_size += len(chunk)
                while self.tail_size - len(self.tail[0]) >= self.limit:
                    dropped = self.tail.popleft()
                    self.tail_size -= len(dropped)
                    self.omitted += len(dropped)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def text(self) -> str:
        parts = [self.head.decode("utf-8", errors="replace")]
        if self.omitted:
            parts.append(f"\n[... {self.omitted} bytes of output omitted ...]\n")
        parts.append(b"".join(self.tail).decode("utf-8", errors="replace"))
        text = "".join(parts).rstrip("\n")
        return "\n".join([text, *self.notes]) if self.notes else text


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """The lines of a text file (nothing for binary, unreadable or very large files)."""
    try:
        if path.stat().st_size > _GREP_MAX_FILE_BYTES:
            return []
        data = path.read_bytes()
    except OSError:
        return []
    if b"\x00" in data[:8192]:
        return []
    return list(enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1))


def _string(arguments: Mapping[str, Any], name: str, *, allow_empty: bool = False) -> str:
    value = arguments.get(name)
    if not isinstance(value, str):
        raise ToolRefused(f"the argument {name!r} is required and must be a string")
    if not value and not allow_empty:
        raise ToolRefused(f"the argument {name!r} must not be empty")
    return value


def _optional_string(arguments: Mapping[str, Any], name: str) -> str:
    value = arguments.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ToolRefused(f"the argument {name!r} must be a string")
    return value


def _integer(arguments: Mapping[str, Any], name: str, default: int) -> int:
    value = arguments.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolRefused(f"the argument {name!r} must be an integer")
    return int(value)
