"""Read eval data files line by line: .jsonl or .jsonl.gz, one clear error line (`file:line: problem`) for a
malformed line. Standard library only (the code sandbox's launcher imports its module as a script)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank line."""
    path = str(path)
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object per line")
            yield lineno, row
