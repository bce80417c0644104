"""The output folder: append-only JSONL files that survive a crash, and resume.

    output/<task_name>/final_data.jsonl        one full record per accepted conversation
    output/<task_name>/formatted_output.jsonl  {"conversation_id", "messages"}, same ids, same order

Each accepted record is appended and flushed to final_data.jsonl first, then to
formatted_output.jsonl, so a killed run loses only conversations in flight. `open_store`
repairs what a kill can leave behind (a torn last line, a formatted line not yet written, an
id written twice) with final_data.jsonl as the source of truth, and holds a lock file so two
runs cannot interleave their lines in one folder.

    >>> store = open_store(Path("output/demo"))
    >>> store["existing"]          # accepted conversations already on disk
    0
    >>> append(store, record); close(store)
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from .config import ConfigError

FINAL = "final_data.jsonl"
FORMATTED = "formatted_output.jsonl"
RUNS = "runs.jsonl"  # one line per run: what made the dataset (read by the dataset card)
LOCK = ".lock"


def format_record(record: dict) -> dict:
    """The SFT view of a record: only the user and assistant messages."""
    return {"conversation_id": record["conversation_id"],
            "messages": [{"role": s["role"], "content": s["content"]}
                         for s in record["steps"] if s["role"] in ("user", "assistant")]}


def open_store(folder: Path) -> dict:
    """Lock the folder, repair its files, and open both to append."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = _take_lock(folder)
    except OSError as exc:
        raise ConfigError(f"cannot write to {folder} ({exc.strerror}): choose a writable folder with --output-dir")
    existing = repair(folder)
    return {"folder": folder, "lock": lock, "existing": existing,
            "final": open(folder / FINAL, "a", encoding="utf-8"),
            "formatted": open(folder / FORMATTED, "a", encoding="utf-8")}


def append(store: dict, record: dict) -> None:
    # subtle: final_data first; if we die between the two writes, repair() rebuilds the formatted line.
    for key, value in (("final", record), ("formatted", format_record(record))):
        store[key].write(json.dumps(value, ensure_ascii=False) + "\n")
        store[key].flush()


def clear(store: dict) -> None:
    """--restart: empty both files (called only once the engine is known to work)."""
    for key in ("final", "formatted"):
        store[key].truncate(0)
    (store["folder"] / RUNS).unlink(missing_ok=True)
    store["existing"] = 0


def log_run(store: dict, run: dict) -> list[dict]:
    """Append this run's summary to runs.jsonl; return every run logged in this folder."""
    path = store["folder"] / RUNS
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(run) + "\n")
    return [run for run in map(_parse_run, _lines(path)) if run]


def _parse_run(line: str) -> dict | None:
    try:
        run = json.loads(line)
    except json.JSONDecodeError:
        return None
    return run if isinstance(run, dict) and "accepted" in run else None


def close(store: dict) -> None:
    store["final"].close()
    store["formatted"].close()
    store["lock"].close()  # releases the flock; the file stays, harmless


def repair(folder: Path) -> int:
    """Make the two files consistent after a crash; return how many conversations they hold.

    Drops torn or unparsable lines and repeated ids from final_data.jsonl, then rewrites
    formatted_output.jsonl from it when the two disagree (formatted lines are rebuilt from records).
    Streams line by line, so memory holds the ids only, never the records.
    """
    final, formatted = folder / FINAL, folder / FORMATTED
    final.touch()
    seen, ids, total = set(), [], 0
    for line in _lines(final):
        total += 1
        if conversation_id := _new_id(line, seen):
            ids.append(conversation_id)
    if len(ids) != total:
        seen = set()
        _rewrite(final, (line for line in _lines(final) if _new_id(line, seen)))
    if _formatted_ids(formatted) != ids:
        _rewrite(formatted, (json.dumps(format_record(r), ensure_ascii=False) + "\n"
                             for r in map(_parse, _lines(final))))
    return len(ids)


def _parse(line: str) -> dict | None:
    """A complete record line, or None for a torn, blank or foreign line."""
    if not line.endswith("\n"):
        return None  # torn: the writer died mid-line
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("conversation_id"), str) else None


def _new_id(line: str, seen: set) -> str | None:
    """The line's conversation_id if the line is whole and the id not in `seen` (then added)."""
    record = _parse(line)
    if record is None or record["conversation_id"] in seen:
        return None
    seen.add(record["conversation_id"])
    return record["conversation_id"]


def _lines(path: Path):
    # errors="replace": a torn last line may end inside a multi-byte character; it is dropped anyway.
    with open(path, encoding="utf-8", errors="replace") as lines:
        yield from lines


def _formatted_ids(path: Path) -> list[str] | None:
    if not path.exists():
        return []
    ids = []
    for line in _lines(path):
        record = _parse(line)
        if record is None:
            return None
        ids.append(record["conversation_id"])
    return ids


def _rewrite(path: Path, lines) -> None:
    """Write `lines` to a temporary file and rename it over `path` (atomic on POSIX)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.writelines(lines)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _take_lock(folder: Path):
    """An exclusive flock on .lock: the kernel releases it when the run dies, even by SIGKILL."""
    lock = open(folder / LOCK, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise ConfigError(f"{folder} is in use by another run (pid {holder}): wait for it, or use another --output-dir")
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock
