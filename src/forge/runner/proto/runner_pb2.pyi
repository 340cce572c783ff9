from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlatformMessage(_message.Message):
    __slots__ = ("hello", "run", "interrupt", "ack", "shutdown", "permission_reply")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_REPLY_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    run: Run
    interrupt: Interrupt
    ack: Ack
    shutdown: Shutdown
    permission_reply: PermissionReply
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., run: _Optional[_Union[Run, _Mapping]] = ..., interrupt: _Optional[_Union[Interrupt, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ..., permission_reply: _Optional[_Union[PermissionReply, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("resume_after", "token")
    RESUME_AFTER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    resume_after: int
    token: str
    def __init__(self, resume_after: _Optional[int] = ..., token: _Optional[str] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("request_id", "prompt", "executor", "env", "timeout_seconds", "resume_session_id", "attachments")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESUME_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt: str
    executor: ExecutorSpec
    env: _containers.ScalarMap[str, str]
    timeout_seconds: int
    resume_session_id: str
    attachments: _containers.RepeatedCompositeFieldContainer[Attachment]
    def __init__(self, request_id: _Optional[str] = ..., prompt: _Optional[str] = ..., executor: _Optional[_Union[ExecutorSpec, _Mapping]] = ..., env: _Optional[_Mapping[str, str]] = ..., timeout_seconds: _Optional[int] = ..., resume_session_id: _Optional[str] = ..., attachments: _Optional[_Iterable[_Union[Attachment, _Mapping]]] = ...) -> None: ...

class Attachment(_message.Message):
    __slots__ = ("name", "media_type", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    media_type: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., media_type: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ExecutorSpec(_message.Message):
    __slots__ = ("kind", "command", "settings_json", "model", "permission_mode", "permission_timeout_seconds")
    KIND_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_MODE_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    command: str
    settings_json: str
    model: str
    permission_mode: str
    permission_timeout_seconds: int
    def __init__(self, kind: _Optional[str] = ..., command: _Optional[str] = ..., settings_json: _Optional[str] = ..., model: _Optional[str] = ..., permission_mode: _Optional[str] = ..., permission_timeout_seconds: _Optional[int] = ...) -> None: ...

class Interrupt(_message.Message):
    __slots__ = ("request_id", "grace_seconds")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    grace_seconds: float
    def __init__(self, request_id: _Optional[str] = ..., grace_seconds: _Optional[float] = ...) -> None: ...

class PermissionReply(_message.Message):
    __slots__ = ("request_id", "permission_id", "decision", "message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    permission_id: str
    decision: str
    message: str
    def __init__(self, request_id: _Optional[str] = ..., permission_id: _Optional[str] = ..., decision: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("runner_seq",)
    RUNNER_SEQ_FIELD_NUMBER: _ClassVar[int]
    runner_seq: int
    def __init__(self, runner_seq: _Optional[int] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("graceful",)
    GRACEFUL_FIELD_NUMBER: _ClassVar[int]
    graceful: bool
    def __init__(self, graceful: _Optional[bool] = ...) -> None: ...

class RunnerBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[RunnerMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[RunnerMessage, _Mapping]]] = ...) -> None: ...

class RunnerMessage(_message.Message):
    __slots__ = ("runner_seq", "request_id", "timestamp", "started", "event", "complete", "error", "state")
    RUNNER_SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    runner_seq: int
    request_id: str
    timestamp: str
    started: Started
    event: Event
    complete: Complete
    error: Error
    state: State
    def __init__(self, runner_seq: _Optional[int] = ..., request_id: _Optional[str] = ..., timestamp: _Optional[str] = ..., started: _Optional[_Union[Started, _Mapping]] = ..., event: _Optional[_Union[Event, _Mapping]] = ..., complete: _Optional[_Union[Complete, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., state: _Optional[_Union[State, _Mapping]] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("executor",)
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    executor: str
    def __init__(self, executor: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("executor", "executor_event_type", "raw_json", "entry_json", "session_id")
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    RAW_JSON_FIELD_NUMBER: _ClassVar[int]
    ENTRY_JSON_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    executor: str
    executor_event_type: str
    raw_json: str
    entry_json: str
    session_id: str
    def __init__(self, executor: _Optional[str] = ..., executor_event_type: _Optional[str] = ..., raw_json: _Optional[str] = ..., entry_json: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_READ_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cache_read_tokens: _Optional[int] = ..., cache_write_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class Complete(_message.Message):
    __slots__ = ("outcome", "exit_code", "usage", "message", "session_id")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    exit_code: int
    usage: Usage
    message: str
    session_id: str
    def __init__(self, outcome: _Optional[str] = ..., exit_code: _Optional[int] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., message: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "recoverable")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RECOVERABLE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    recoverable: bool
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., recoverable: _Optional[bool] = ...) -> None: ...

class State(_message.Message):
    __slots__ = ("status", "current_request_id", "last_runner_seq", "known_request_ids")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_RUNNER_SEQ_FIELD_NUMBER: _ClassVar[int]
    KNOWN_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    status: str
    current_request_id: str
    last_runner_seq: int
    known_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, status: _Optional[str] = ..., current_request_id: _Optional[str] = ..., last_runner_seq: _Optional[int] = ..., known_request_ids: _Optional[_Iterable[str]] = ...) -> None: ...
