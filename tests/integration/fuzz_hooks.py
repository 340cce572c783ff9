"""schemathesis hooks for `test_fuzz_api.py` (loaded by the `st` process through
`SCHEMATHESIS_HOOKS`): some generated ids are replaced by objects the test seeded, and some
generated `user_id`s by the key's own owner or left out, so requests reach the routes' logic
rather than stopping at 404 or 403 every time. The seeded values come in environment
variables.

Only valid generated values are replaced: a request generated to be invalid (an id that
breaks its pattern) must stay invalid, or the server would rightly accept it and
`negative_data_rejection` would fail.
"""

from __future__ import annotations

import os
import re
from typing import Any

import schemathesis
from hypothesis import strategies as st

from forge.api.routes import AGENT_ID_PATTERN
from forge.api.sessions import TASK_ID_PATTERN
from forge.core.schemas import NAME_PATTERN

SEEDED = {
    "agent_id": os.environ.get("FUZZ_AGENT_ID", ""),
    "task_id": os.environ.get("FUZZ_TASK_ID", ""),
}
PATTERNS = {"agent_id": AGENT_ID_PATTERN, "task_id": TASK_ID_PATTERN, "user_id": NAME_PATTERN}
OWNER = os.environ.get("FUZZ_OWNER", "")


def _valid(name: str, value: object) -> bool:
    # `fullmatch` without the anchors: `$` would also match before a final newline.
    pattern = PATTERNS[name].removeprefix("^").removesuffix("$")
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


@schemathesis.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    # Not for DELETE: the seeded agent lives through the whole run.
    operation = context.operation
    if not path_parameters or (operation is not None and operation.method.upper() == "DELETE"):
        return st.just(path_parameters)
    seeded = dict(path_parameters)
    for name, value in path_parameters.items():
        if SEEDED.get(name) and _valid(name, value):
            seeded[name] = SEEDED[name]
    return st.sampled_from([path_parameters, seeded])


@schemathesis.hook
def flatmap_query(
    context: schemathesis.HookContext, query: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    # A generated `user_id` names another owner, which an owner's key may not (403).
    if not query or not OWNER or not _valid("user_id", query.get("user_id")):
        return st.just(query)
    without = {k: v for k, v in query.items() if k != "user_id"}
    return st.sampled_from([query, without, {**without, "user_id": OWNER}])


# The key the fuzzer's requests carry: schemathesis reuses ids it read in answers (`GET
# /api/v1/keys`), and revoking this one would leave every later request a 401.
KEY_ID = os.environ.get("FUZZ_KEY_ID", "")


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: Any, kwargs: dict[str, Any]) -> None:
    if (
        KEY_ID
        and case.method.upper() == "DELETE"
        and (case.path_parameters or {}).get("key_id") == KEY_ID
    ):
        case.path_parameters["key_id"] = "key_" + "0" * 26
