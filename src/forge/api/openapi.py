"""The OpenAPI document of Forge's API: what `GET /openapi.json` serves, whatever the settings.

`python -m forge.api.openapi docs/openapi.json` writes it to the copy published in `docs/` (a
test fails when that copy is behind the code).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from forge.api.app import create_app
from forge.config import Settings


def openapi_document() -> dict[str, Any]:
    """The document, built from the routes without starting anything."""
    with tempfile.TemporaryDirectory(prefix="forge-openapi-") as data_dir:
        return create_app(Settings(data_dir=Path(data_dir))).openapi()


def render(document: dict[str, Any]) -> str:
    """The document as the file in `docs/` holds it: stable, indented JSON."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        print("usage: python -m forge.api.openapi [OUTPUT.json]", file=sys.stderr)
        return 2
    text = render(openapi_document())
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
