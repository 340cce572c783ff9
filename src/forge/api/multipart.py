"""Messages as form data (multipart, or URL-encoded without files): turned into the JSON
body of `POST .../messages`.

Applications that upload files often send `multipart/form-data`. Rather than a second way of
parsing a message, this plain ASGI layer reads the form (fields `content`, `request_id`,
`webhook_url`, `webhook_secret`, `priority`; each file part named `files` becomes an attachment)
and hands the route the same JSON it validates for everyone. Limits apply as for JSON.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forge.api.errors import error_response
from forge.core.schemas import MAX_ATTACHMENTS, MAX_MESSAGE_CHARS

MESSAGES_PATH = re.compile(r"^/api/v1/agents/[^/]+/messages$")
# Bodies that may carry attachments (base64 in JSON, or form data): the larger size limit.
ATTACHMENT_PATHS = re.compile(r"^/api/v1/(agents|neurons)/[^/]+/messages$")
_TEXT_FIELDS = ("content", "request_id", "webhook_url", "webhook_secret")
# Browsers' plain forms too (without files).
_FORM_TYPES = (b"multipart/form-data", b"application/x-www-form-urlencoded")
_FORM_FIELDS = frozenset({*_TEXT_FIELDS, "priority", "files"})


class MultipartMessages:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_multipart_message(scope):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            form = await request.form(
                max_files=MAX_ATTACHMENTS + 1,
                max_fields=32,
                max_part_size=MAX_MESSAGE_CHARS * 4,
            )
            body = await _json_body(form.multi_items())
        except HTTPException as exc:  # the body limit, hit while the form was read
            response = error_response(exc.status_code, "body_too_large", str(exc.detail))
            await response(scope, receive, send)
            return
        except _FormError as exc:
            await error_response(422, "invalid_request", str(exc))(scope, receive, send)
            return
        except Exception as exc:  # the multipart parser's own errors
            message = f"the multipart body could not be parsed: {exc}"
            await error_response(400, "invalid_multipart", message)(scope, receive, send)
            return
        finally:
            await request.close()
        data = json.dumps(body).encode()
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name not in (b"content-type", b"content-length")
        ]
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        sent = False

        async def json_receive() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # waits for the disconnect
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}

        await self.app({**scope, "headers": headers}, json_receive, send)


class _FormError(ValueError):
    pass


def _is_multipart_message(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    if not MESSAGES_PATH.match(scope["path"]):
        return False
    for name, value in scope.get("headers") or []:
        if name == b"content-type":
            return bool(value.lower().startswith(_FORM_TYPES))
    return False


async def _json_body(items: list[tuple[str, str | UploadFile]]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    attachments: list[dict[str, str]] = []
    for name, value in items:
        if name not in _FORM_FIELDS:
            raise _FormError(f"{name}: is not a known field; fields: {sorted(_FORM_FIELDS)}")
        if name == "files":
            if not isinstance(value, UploadFile):
                raise _FormError("files: each part must be a file (with a filename)")
            data = await value.read()
            if not value.filename and not data:
                continue  # a browser's empty file input
            attachments.append(
                {
                    "name": value.filename or "file",
                    "media_type": value.content_type or "application/octet-stream",
                    "content_base64": base64.b64encode(data).decode(),
                }
            )
        elif isinstance(value, UploadFile):
            raise _FormError(f"{name}: must be a text field, not a file")
        elif name in body:
            raise _FormError(f"{name}: given more than once")
        elif name == "priority":
            try:
                body[name] = int(value)
            except ValueError:
                raise _FormError("priority: must be an integer") from None
        else:
            body[name] = value
    if attachments:
        body["attachments"] = attachments
    return body
