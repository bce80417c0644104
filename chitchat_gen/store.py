"""The output folder: append-only JSONL files that survive a crash, and resume.

    output/<task_name>/final_data.jsonl        one full record per accepted conversation
    output/<task_name>/formatted_output.jsonl  {"conversation_id", "messages"}, same ids, same order
    output/<task_name>/rejected.jsonl          lines that repair took out, with line number and reason
    output/<task_name>/runs.jsonl              one line per run (read by the dataset card)

Each accepted record is appended and flushed to final_data.jsonl first, then to
formatted_output.jsonl, so a killed run loses only conversations in flight. `open_store`
repairs what a kill (or a hand edit) can leave behind, with final_data.jsonl as the source of
truth: a line that is not a whole record (a torn last line, broken JSON) or repeats an id is
moved to rejected.jsonl, never silently deleted; formatted lines are rebuilt from the records.
It holds a lock on `.lock` so two runs cannot interleave their lines in one folder: flock on
Linux and macOS, msvcrt.locking on Windows, and elsewhere a pid file taken over once its run is dead.

    store = open_store(Path("output/demo"))
    store["existing"], store["notes"]      # conversations already on disk, what repair did
    append(store, record); close(store)
"""

from __future__ import annotations

import errno
import json
import os
from datetime import datetime, timezone
from pathlib import Path

try:  # POSIX (Linux, macOS)
    import fcntl
except ImportError:
    fcntl = None
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None

from .errors import ConfigError
from .record import format_record, read_jsonl, to_line

FINAL = "final_data.jsonl"
FORMATTED = "formatted_output.jsonl"
REJECTED = "rejected.jsonl"
RUNS = "runs.jsonl"
LOCK = ".lock"


class WriteError(Exception):
    """A write to the output folder failed (disk full, quota, size limit, I/O error): the run stops."""


# What to do about a write that failed, by errno; the files stay in step whatever the cause.
_WRITE_FIXES = {errno.ENOSPC: "free space", errno.EDQUOT: "free space (or raise your disk quota)",
                errno.EFBIG: "the file reached a size limit (ulimit -f, or the filesystem's): raise it",
                errno.EIO: "check the disk (dmesg names the device)", errno.EROFS: "remount the folder writable",
                errno.EACCES: "make the folder writable", errno.EPERM: "make the folder writable"}


def write_error(path: Path, exc: OSError) -> WriteError:
    """The one line a failed write becomes, naming the file, the cause and the fix.

    >>> str(write_error(Path("out/final_data.jsonl"), OSError(errno.ENOSPC, "No space left on device")))
    'cannot write out/final_data.jsonl: no space left on device (ENOSPC): free space, then run the same command without --restart'
    """
    cause = (exc.strerror or str(exc)).lower()
    code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    fix = _WRITE_FIXES.get(exc.errno, "make room or fix the folder")
    return WriteError(f"cannot write {path}: {cause}{code}: {fix}, then run the same command without --restart")


def _open(path: Path, mode: str = "a"):
    # subtle: "\n" line endings and UTF-8 on every OS, so the files are the same bytes everywhere.
    return open(path, mode, encoding="utf-8", newline="\n")


def _open_raw(path: Path):
    # Unbuffered bytes: what a write did not put on disk is never held back to fail again at close.
    return open(path, "ab", buffering=0)


def _append_all(files: list, lines: list[str]) -> None:
    """Append each line to its file, all or none: on a failure every file is cut back to its size
    before, and the OSError is raised (the files stay in step, with no torn line)."""
    sizes = [os.fstat(out.fileno()).st_size for out in files]
    for out, line in zip(files, lines):
        data = memoryview(line.encode("utf-8"))
        try:
            while data:  # a write may take part of the bytes (a disk filling up), then fail on the rest
                data = data[out.write(data):]
        except OSError as exc:
            for written, size in zip(files, sizes):
                os.ftruncate(written.fileno(), size)  # subtle: shrinking a file needs no free space
            exc.filename = exc.filename or out.name
            raise


def count_existing(folder: Path) -> int:
    """Whole, distinct records in the folder's final_data.jsonl; reads only, changes nothing."""
    return len(scan(folder / FINAL)[0]) if (folder / FINAL).is_file() else 0


def open_store(folder: Path) -> dict:
    """Lock the folder, repair its files, and open both to append."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        unlock = _take_lock(folder)
    except OSError as exc:
        raise ConfigError(f"cannot write to {folder} ({exc.strerror}): choose a writable folder with --output-dir")
    try:
        existing, notes = repair(folder)
    except OSError as exc:
        unlock()
        raise write_error(Path(exc.filename or folder), exc)
    return {"folder": folder, "unlock": unlock, "existing": existing, "notes": notes,
            "final": _open_raw(folder / FINAL), "formatted": _open_raw(folder / FORMATTED)}


def append(store: dict, record: dict) -> None:
    """Append one accepted record to both files, or to neither (WriteError when a write fails).

    subtle: final_data first; if we die between the two writes, repair() rebuilds the formatted line.
    """
    try:
        _append_all([store["final"], store["formatted"]], [to_line(record), to_line(format_record(record))])
    except OSError as exc:
        raise write_error(Path(exc.filename), exc)


def clear(store: dict) -> None:
    """--restart: empty both files and the run log (called only once the engine is known to work)."""
    for key in ("final", "formatted"):
        store[key].truncate(0)
    (store["folder"] / RUNS).unlink(missing_ok=True)
    store["existing"] = 0


def log_run(store: dict, run: dict) -> list[dict]:
    """Append this run's summary to runs.jsonl (whole, or not at all: WriteError); return every run logged."""
    path = store["folder"] / RUNS
    with _open_raw(path) as out:
        try:
            _append_all([out], [json.dumps(run) + "\n"])
        except OSError as exc:
            raise write_error(path, exc)
    return read_runs(store["folder"])


def read_runs(folder: Path) -> list[dict]:
    """Every run logged in the folder's runs.jsonl, oldest first; [] without one."""
    path = folder / RUNS
    if not path.is_file():
        return []
    return [value for _, _, value, _ in read_jsonl(path) if isinstance(value, dict) and "accepted" in value]


def close(store: dict) -> None:
    store["final"].close()
    store["formatted"].close()
    store["unlock"]()


# --- repair -------------------------------------------------------------------------------

def scan(path: Path) -> tuple[list[str], dict[int, str]]:
    """(ids of the whole records in order, {line number: why that line is not one}) of a JSONL file.

    Streams: memory holds the ids, never the records.
    """
    ids, bad, first = [], {}, {}
    for number, text, value, problem in read_jsonl(path):
        conversation_id = value.get("conversation_id") if isinstance(value, dict) else None
        if not text.endswith("\n"):
            bad[number] = "torn last line (a run was killed while writing it)"
        elif problem:
            bad[number] = problem
        elif not isinstance(conversation_id, str):
            bad[number] = "not a conversation record (no conversation_id)"
        elif conversation_id in first:
            bad[number] = f"repeats conversation_id {conversation_id} of line {first[conversation_id]}"
        else:
            first[conversation_id] = number
            ids.append(conversation_id)
    return ids, bad


def repair(folder: Path) -> tuple[int, list[str]]:
    """Make the two files consistent after a crash; return (conversations held, notes for the user).

    Bad lines of final_data.jsonl, and formatted lines whose record is not kept, go to
    rejected.jsonl (written and synced before the file they leave is replaced). A torn last
    formatted line is rebuilt from its record, so it is not kept.
    """
    final, formatted = folder / FINAL, folder / FORMATTED
    final.touch()
    ids, bad = scan(final)
    notes = []
    if bad:
        _reject(folder, final, bad)
        rewrite(final, (text for number, text, _, _ in read_jsonl(final) if number not in bad))
        notes.append(_note(FINAL, bad))
    formatted_ids, formatted_bad = scan(formatted) if formatted.exists() else ([], {})
    if formatted_ids != ids or formatted_bad:
        kept, orphans = set(ids), {}
        for number, text, value, _ in read_jsonl(formatted):
            if not text.endswith("\n"):
                continue  # torn: its record (if whole) rebuilds it
            if number in formatted_bad:
                orphans[number] = formatted_bad[number]
            elif value["conversation_id"] not in kept:
                orphans[number] = f"its record is not in {FINAL}"
        if orphans:
            _reject(folder, formatted, orphans)
            notes.append(_note(FORMATTED, orphans))
        rewrite(formatted, (to_line(format_record(value)) for number, _, value, _ in read_jsonl(final)))
    return len(ids), notes


def _note(name: str, bad: dict[int, str]) -> str:
    shown = "; ".join(f"line {number}: {reason}" for number, reason in list(bad.items())[:3])
    more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"{name}: moved {len(bad)} bad line{'s' if len(bad) > 1 else ''} to {REJECTED} ({shown}{more})"


def _reject(folder: Path, path: Path, bad: dict[int, str]) -> None:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with _open(folder / REJECTED) as out:
        for number, text, _, _ in read_jsonl(path):
            if number in bad:
                out.write(to_line({"file": path.name, "line": number, "reason": bad[number], "date": when, "text": text}))
        out.flush()
        os.fsync(out.fileno())


def rewrite(path: Path, lines) -> None:
    """Write `lines` to a temporary file and rename it over `path` (atomic on POSIX): `path` is
    replaced whole or, when a write fails (a full disk), left as it was, with no temporary file behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with _open(tmp, "w") as out:
            out.writelines(lines)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def lock_holder(folder: Path) -> str | None:
    """The pid of the run writing in `folder`, or None (a probe: it holds the lock for an instant).

    subtle: a run starting in that instant is told the folder is in use; the viewer polls with
    this, a window of microseconds per poll.
    """
    try:
        release = _take_lock(folder)
    except ConfigError:
        return (folder / LOCK).read_text(encoding="utf-8", errors="replace").strip() or "?"
    release()
    return None


def _in_use(folder: Path) -> ConfigError:
    try:
        holder = (folder / LOCK).read_text(encoding="utf-8", errors="replace").strip() or "?"
    except OSError:
        holder = "?"
    return ConfigError(f"{folder} is in use by another run (pid {holder}): wait for it, or use another --output-dir")


def _flock(folder: Path):
    """An exclusive flock on .lock: the kernel releases it when the run dies, even by SIGKILL."""
    lock = open(folder / LOCK, "a+", encoding="utf-8", newline="\n")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise _in_use(folder)
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock.close  # releases the flock; the file stays, harmless


# subtle: Windows locks are mandatory, so a locked byte cannot be read by another process; lock
# one byte far past the pid, which stays readable for the "in use" message.
_LOCKED_BYTE = 1 << 20


def _msvcrt_lock(folder: Path):
    """A byte-range lock on .lock: Windows releases it when the handle closes or the run dies."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0))
    os.lseek(fd, _LOCKED_BYTE, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        os.close(fd)
        raise _in_use(folder)
    # Padded to a fixed width instead of truncated: a longer earlier pid is overwritten whole.
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid():<20}".encode())

    def unlock():
        os.lseek(fd, _LOCKED_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        os.close(fd)
    return unlock


def _pid_file_lock(folder: Path):
    """Neither flock nor msvcrt: .lock exists while a run holds the folder and names its pid.

    The file is written in full under another name and hard-linked into place, so a reader never
    sees it half-written. A lock whose pid is no longer a live process is taken over.
    """
    path, mine = folder / LOCK, folder / f"{LOCK}.{os.getpid()}"
    mine.write_text(str(os.getpid()), encoding="utf-8")
    try:
        for attempt in (1, 2):
            try:
                os.link(mine, path)
                break
            except FileExistsError:
                if attempt == 2 or _alive(path.read_text(encoding="utf-8", errors="replace")):
                    raise _in_use(folder)
                # subtle: two runs starting in the same instant on a dead run's lock could both
                # get here; flock and msvcrt have no such window, this path is the last resort.
                path.unlink(missing_ok=True)
    finally:
        mine.unlink(missing_ok=True)

    def unlock():
        try:
            if path.read_text(encoding="utf-8", errors="replace") == str(os.getpid()):
                path.unlink()
        except FileNotFoundError:
            pass  # someone removed it by hand: nothing left to release
    return unlock


def _alive(pid: str) -> bool:
    # Signal 0 only asks whether the process exists (never reached on Windows, where os.kill kills).
    if not pid.strip().isdigit() or int(pid) <= 0:
        return False  # not a pid we wrote: a leftover, not a holder
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


# The choice is made once, at import: _take_lock(folder) holds .lock for this run (or raises
# ConfigError naming the holder's pid) and returns the function that releases it.
_take_lock = _flock if fcntl else _msvcrt_lock if msvcrt else _pid_file_lock
