"""File reading and writing every stage shares: atomic writes (a stage never leaves a half-written
file behind: temp file + rename) and the one JSONL reader (file:line errors for bad input)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from sae.errors import UserError


def usual_mode(path: Path, base: int) -> None:
    """Give a temp file (mkstemp: 0600) or folder (mkdtemp: 0700) the permissions a plain create
    would, `base & ~umask`, so what it becomes is readable as any other output is."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, base & ~umask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            usual_mode(tmp_path, 0o666)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def output_dir(path: str | os.PathLike | None, flag: str = "--out") -> Path | None:
    """Check an output folder before any work: it may be missing (it is created) or a folder, not a file."""
    if path is None:
        return None
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p} is a file, not a folder; give a folder path")
    return p


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file a stage wrote; a damaged one is a UserError naming it (JSONDecodeError is a ValueError)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-create it with the stage that writes it") from None


def iter_jsonl(path: str | os.PathLike, required: tuple[str, ...] = ("text",), hint: str = "") -> Iterator[dict]:
    """Rows of a JSONL file, streamed; a bad line is a UserError naming file and line (and `hint`,
    the fix, when a required field is missing)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path}:{i}: not UTF-8 text; re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{i}: malformed JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{i}: not a JSON object; each line must be one {{...}} record")
            missing = [k for k in required if k not in row]
            if missing:
                raise UserError(f"{path}:{i}: missing field(s) {', '.join(missing)}" + (f"; {hint}" if hint else ""))
            yield row


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...] = ("text",)) -> list[dict]:
    """All rows of a JSONL file that must hold some."""
    rows = list(iter_jsonl(path, required))
    if not rows:
        raise UserError(f"{path} holds no rows")
    return rows
