"""The output folder: append-only JSONL files that survive a crash, and resume.

    output/<task_name>/final_data.jsonl        one full record per accepted conversation
    output/<task_name>/formatted_output.jsonl  {"conversation_id", "messages"}, same ids, same order
    output/<task_name>/rejected.jsonl          lines that repair took out, with line number and reason
    output/<task_name>/runs.jsonl              one line per run (read by the dataset card)
    output/<task_name>/.checkpoint.json, .ids  both files as the last close left them (see below)

Each accepted record is appended and flushed to final_data.jsonl first, then to
formatted_output.jsonl, so a killed run loses only conversations in flight. `open_store`
repairs what a kill (or a hand edit) can leave behind, with final_data.jsonl as the source of
truth: a line that is not a whole record (a torn last line, broken JSON) or repeats an id is
moved to rejected.jsonl, never silently deleted; formatted lines are rebuilt from the records.
Repair costs what came after the last close, not the folder: every close leaves a checkpoint
(each file's inode, size, time and a hash of its last MB; the records; a hash of every id), and
a run reads only the lines after it, the ones a killed run left. Whatever else it finds (no
checkpoint, a file replaced, shortened or edited where the checkpoint sees it, a bad line before
the end, an id seen before) is a full check of both files, as is any folder whose checkpoint
is deleted by hand. It holds a lock on `.lock` so two runs cannot interleave their lines in one folder: flock on
Linux and macOS, msvcrt.locking on Windows, and elsewhere a pid file taken over once its run is dead.

    store = open_store(Path("output/demo"))
    store["existing"], store["notes"]      # conversations already on disk, what repair did
    append(store, record); close(store)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
from array import array
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

from .errors import ConfigError, WriteError
from .record import format_record, read_jsonl, read_lines, to_line

FINAL = "final_data.jsonl"
FORMATTED = "formatted_output.jsonl"
REJECTED = "rejected.jsonl"
RUNS = "runs.jsonl"
LOCK = ".lock"
CHECKPOINT = ".checkpoint.json"
IDS = ".ids"
CHECKPOINT_VERSION = 1
BOUNDARY = 1 << 20  # bytes before a checkpoint's end that must be unchanged for the lines after it to be all there is to read
TORN = "torn last line (a run was killed while writing it)"


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


def timestamp() -> str:
    """Now, as every date in the folder's files is written: `2026-12-03 10:52 UTC`."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


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
    if not (folder / FINAL).is_file():
        return 0
    plan = _tail_plan(folder)
    return plan["records"] if plan else len(scan(folder / FINAL)[0])


def open_store(folder: Path) -> dict:
    """Lock the folder, repair its files, and open both to append."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        unlock = _take_lock(folder)
    except OSError as exc:
        raise ConfigError(f"cannot write to {folder} ({exc.strerror}): choose a writable folder with --output-dir")
    try:
        state = repair(folder)
    except OSError as exc:
        unlock()
        raise write_error(Path(exc.filename or folder), exc)
    return {"folder": folder, "unlock": unlock, **state, "records": state["existing"],
            "final": _open_raw(folder / FINAL), "formatted": _open_raw(folder / FORMATTED)}


def append(store: dict, record: dict) -> None:
    """Append one accepted record to both files, or to neither (WriteError when a write fails).

    subtle: final_data first; if we die between the two writes, repair() rebuilds the formatted line.
    """
    try:
        _append_all([store["final"], store["formatted"]], [to_line(record), to_line(format_record(record))])
    except OSError as exc:
        raise write_error(Path(exc.filename), exc)
    store["records"] += 1
    store["lines"] += 1
    store["new_ids"].append(id_hash(record["conversation_id"]))


def clear(store: dict) -> None:
    """--restart: empty both files and the run log (called only once the engine is known to work)."""
    for key in ("final", "formatted"):
        store[key].truncate(0)
    (store["folder"] / RUNS).unlink(missing_ok=True)
    store.update(existing=0, records=0, lines=0, new_ids=array("Q"), ids_saved=False)


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
    """Close both files, leave the checkpoint that lets the next run skip what it already checked, unlock."""
    store["final"].close()
    store["formatted"].close()
    try:
        _save_checkpoint(store)
    finally:
        store["unlock"]()


def tail_offset(path: Path, count: int) -> int:
    r"""The byte where the last `count` lines of a file start (0 when it has no more), read from its end.

    >>> import tempfile; path = Path(tempfile.mkdtemp()) / "f"; _ = path.write_text("a\nbb\nc\n")
    >>> tail_offset(path, 2), tail_offset(path, 5)
    (2, 0)
    """
    with open(path, "rb") as data:
        position, wanted = data.seek(0, os.SEEK_END), count + 1  # the newline that ends the line before them
        while position > 0:
            step = min(1 << 20, position)
            position -= step
            data.seek(position)
            chunk = data.read(step)
            if chunk.count(b"\n") < wanted:
                wanted -= chunk.count(b"\n")
                continue
            end = len(chunk)
            for _ in range(wanted):
                end = chunk.rfind(b"\n", 0, end)
            return position + end + 1
    return 0


# --- the checkpoint: what the last close left, so a run reads only what came after ----------
# .checkpoint.json holds each file's `mark` and the records and lines of final_data.jsonl as the
# last close left them (in step); .ids holds the 8-byte hash of each record's conversation_id, in
# file order. A run that was killed leaves lines after the marks, and repair reads only those.

def id_hash(conversation_id: str) -> int:
    """A conversation_id as the 64-bit number .ids keeps (two ids share one with odds ~n²/2^65)."""
    return int.from_bytes(hashlib.blake2b(conversation_id.encode("utf-8"), digest_size=8).digest(), "little")


def mark(path: Path) -> dict:
    """What a file is now: enough to tell later (`grown_from`) that only lines were appended since."""
    stat = path.stat()
    return {"inode": stat.st_ino, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "boundary": _boundary(path, stat.st_size)}


def grown_from(path: Path, saved: dict) -> bool:
    r"""`path` is the file `saved` (a `mark`) describes, with at most lines appended since.

    The same inode, no shorter, its last MB before the saved end unchanged, and, at the same size,
    the same modification time. A hand edit in place fails one of these, unless it keeps the size
    and the time (`touch -d`) or changes only bytes more than a MB before the end and also appends.

    >>> import tempfile; path = Path(tempfile.mkdtemp()) / "f"; _ = path.write_text("a\n"); saved = mark(path)
    >>> _ = open(path, "a").write("b\n"); grown_from(path, saved)
    True
    >>> _ = path.write_text("c\nb\n"); grown_from(path, saved)
    False
    """
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_ino != saved["inode"] or stat.st_size < saved["size"] or \
            (stat.st_size == saved["size"] and stat.st_mtime_ns != saved["mtime_ns"]):
        return False
    return _boundary(path, saved["size"]) == saved["boundary"]


def _boundary(path: Path, size: int) -> str:
    with open(path, "rb") as data:
        data.seek(max(0, size - BOUNDARY))
        return hashlib.blake2b(data.read(min(size, BOUNDARY)), digest_size=16).hexdigest()


def _load_checkpoint(folder: Path) -> tuple[dict, array] | None:
    """The checkpoint and the ids it counts, or None if either is missing, unreadable or out of step."""
    try:
        saved = json.loads((folder / CHECKPOINT).read_text(encoding="utf-8"))
        hashes = array("Q")
        with open(folder / IDS, "rb") as data:
            hashes.frombytes(data.read())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("version") != CHECKPOINT_VERSION or \
            saved.get("byteorder") != sys.byteorder or len(hashes) != saved.get("records"):
        return None
    return saved, hashes


def _save_checkpoint(store: dict) -> None:
    folder = store["folder"]
    try:
        if store["ids_saved"]:
            with open(folder / IDS, "ab") as out:
                store["new_ids"].tofile(out)
        else:
            rewrite(folder / IDS, [store["new_ids"].tobytes()], binary=True)
        checkpoint = {"version": CHECKPOINT_VERSION, "byteorder": sys.byteorder, "records": store["records"],
                      "lines": store["lines"], "final": mark(folder / FINAL), "formatted": mark(folder / FORMATTED)}
        rewrite(folder / CHECKPOINT, [json.dumps(checkpoint) + "\n"])
    except OSError:
        # No room for it (a full disk): without a checkpoint the next run checks both files in full.
        (folder / CHECKPOINT).unlink(missing_ok=True)


# --- repair -------------------------------------------------------------------------------

def scan(path: Path) -> tuple[list[str], dict[int, str], int]:
    """(ids of the whole records in order, {line number: why that line is not one}, lines) of a JSONL file.

    Streams: memory holds the ids, never the records.
    """
    ids, bad, first, number = [], {}, {}, 0
    for number, _, text, value, problem in read_lines(path):
        if not text.strip():
            continue
        conversation_id = value.get("conversation_id") if isinstance(value, dict) else None
        if not text.endswith("\n"):
            bad[number] = TORN
        elif problem:
            bad[number] = problem
        elif not isinstance(conversation_id, str):
            bad[number] = "not a conversation record (no conversation_id)"
        elif conversation_id in first:
            bad[number] = f"repeats conversation_id {conversation_id} of line {first[conversation_id]}"
        else:
            first[conversation_id] = number
            ids.append(conversation_id)
    return ids, bad, number


def repair(folder: Path) -> dict:
    """Make the two files consistent after a crash; return the folder's state: "existing" (conversations
    held), "notes" (for the user), and what `close` needs for the checkpoint.

    With a checkpoint that still describes both files, only the lines after it are read: whole new
    records, a torn last line, formatted lines missing at the end are mended there. Anything else
    (no checkpoint, a file replaced or edited, a bad line before the end, an id seen before) is
    repaired by `full_repair`.
    """
    final = folder / FINAL
    _open(final).close()  # subtle: creates it if missing, without touching its modification time
    plan = _tail_plan(folder)
    if plan is None:
        return full_repair(folder)
    notes = []
    if plan["torn"]:
        number, start, text = plan["torn"]
        _reject(folder, FINAL, [(number, TORN, text)])
        _cut(final, start, plan["saved"]["final"])
        notes.append(_note(FINAL, {number: TORN}))
    if plan["twins_from"] is not None:  # formatted lines missing at the end: rebuilt from their records
        _cut(folder / FORMATTED, plan["formatted_cut"], plan["saved"]["formatted"])
        with _open(folder / FORMATTED) as out:
            out.writelines(to_line(format_record(value)) for _, _, text, value, _ in
                           read_lines(final, plan["twins_from"]) if text.strip())
            out.flush()
            os.fsync(out.fileno())
    return {"existing": plan["records"], "notes": notes, "lines": plan["lines"], "new_ids": plan["new_ids"],
            "ids_saved": True}


def _cut(path: Path, size: int, saved: dict) -> None:
    """Truncate `path` to `size`; cut back to its mark's bytes, it gets the mark's time back, so the
    checkpoint and the card's totals still know it."""
    os.truncate(path, size)
    if size == saved["size"]:
        os.utime(path, ns=(path.stat().st_atime_ns, saved["mtime_ns"]))


def _tail_plan(folder: Path) -> dict | None:
    """What repair would do to the lines after the checkpoint, or None when only `full_repair` will do.

    Reads only those lines (and .ids): memory holds their ids' hashes, never the records.
    """
    final, formatted = folder / FINAL, folder / FORMATTED
    loaded = _load_checkpoint(folder)
    if loaded is None:
        return None
    saved, hashes = loaded
    if not grown_from(final, saved["final"]) or not grown_from(formatted, saved["formatted"]):
        return None
    twins = (line for line in read_lines(formatted, saved["formatted"]["size"]) if line[2].strip())
    new_ids, seen, torn, twins_from, formatted_cut = array("Q"), set(), None, None, None
    lines = saved["lines"]
    for number, start, text, value, problem in read_lines(final, saved["final"]["size"], saved["lines"]):
        if not text.strip():
            lines = number
            continue
        if not text.endswith("\n"):
            torn = (number, start, text)
            break
        conversation_id = value.get("conversation_id") if isinstance(value, dict) else None
        if problem or not isinstance(conversation_id, str):
            return None
        hashed = id_hash(conversation_id)
        if hashed in seen:
            return None
        seen.add(hashed)
        new_ids.append(hashed)
        lines = number
        if twins_from is None:
            twin = next(twins, None)
            if twin is None or not twin[2].endswith("\n"):  # killed before this formatted line was whole
                twins_from, formatted_cut = start, twin[1] if twin else formatted.stat().st_size
            elif not isinstance(twin[3], dict) or twin[3].get("conversation_id") != conversation_id:
                return None
    if twins_from is None and (extra := next(twins, None)):
        if extra[2].endswith("\n"):
            return None  # a formatted line without its record
        twins_from, formatted_cut = final.stat().st_size if not torn else torn[1], extra[1]
    if not seen.isdisjoint(hashes):
        return None  # an id seen before the checkpoint: full_repair says which line it repeats
    return {"records": saved["records"] + len(new_ids), "lines": lines, "new_ids": new_ids, "torn": torn,
            "twins_from": twins_from, "formatted_cut": formatted_cut, "saved": saved}


def full_repair(folder: Path) -> dict:
    """Check both files line by line (repair's fallback); returns what `repair` does.

    Bad lines of final_data.jsonl, and formatted lines whose record is not kept, go to
    rejected.jsonl (written and synced before the file they leave is replaced). A torn last
    formatted line is rebuilt from its record, so it is not kept.
    """
    final, formatted = folder / FINAL, folder / FORMATTED
    ids, bad, lines = scan(final)
    notes = []
    if bad:
        _reject(folder, FINAL, [(number, bad[number], text) for number, text, _, _ in read_jsonl(final) if number in bad])
        rewrite(final, (text for number, text, _, _ in read_jsonl(final) if number not in bad))
        notes.append(_note(FINAL, bad))
        lines = len(ids)
    if not _in_step(formatted, ids):
        formatted_bad = scan(formatted)[1] if formatted.exists() else {}
        kept, orphans = set(ids), []
        for number, text, value, _ in read_jsonl(formatted) if formatted.exists() else ():
            if not text.endswith("\n"):
                continue  # torn: its record (if whole) rebuilds it
            if number in formatted_bad:
                orphans.append((number, formatted_bad[number], text))
            elif value["conversation_id"] not in kept:
                orphans.append((number, f"its record is not in {FINAL}", text))
        if orphans:
            _reject(folder, FORMATTED, orphans)
            notes.append(_note(FORMATTED, {number: reason for number, reason, _ in orphans}))
        rewrite(formatted, (to_line(format_record(value)) for number, _, value, _ in read_jsonl(final)))
    return {"existing": len(ids), "notes": notes, "lines": lines, "new_ids": array("Q", map(id_hash, ids)),
            "ids_saved": False}


def _in_step(formatted: Path, ids: list[str]) -> bool:
    """formatted_output.jsonl holds whole lines of exactly `ids`, in order (streams: memory holds one line)."""
    if not formatted.exists():
        return not ids
    count = 0
    for _, _, text, value, _ in read_lines(formatted):
        if not text.strip():
            continue
        if not text.endswith("\n") or not isinstance(value, dict) or count == len(ids) \
                or value.get("conversation_id") != ids[count]:
            return False
        count += 1
    return count == len(ids)


def _note(name: str, bad: dict[int, str]) -> str:
    shown = "; ".join(f"line {number}: {reason}" for number, reason in list(bad.items())[:3])
    more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"{name}: moved {len(bad)} bad line{'s' if len(bad) > 1 else ''} to {REJECTED} ({shown}{more})"


def _reject(folder: Path, name: str, rows: list[tuple[int, str, str]]) -> None:
    """Append (line number, reason, text) rows of file `name` to rejected.jsonl, synced."""
    when = timestamp()
    with _open(folder / REJECTED) as out:
        for number, reason, text in rows:
            out.write(to_line({"file": name, "line": number, "reason": reason, "date": when, "text": text}))
        out.flush()
        os.fsync(out.fileno())


def rewrite(path: Path, lines, binary: bool = False) -> None:
    """Write `lines` (bytes if `binary`) to a temporary file and rename it over `path` (atomic on POSIX):
    `path` is replaced whole or, when a write fails (a full disk), left as it was, with no temporary file behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "wb") if binary else _open(tmp, "w") as out:
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
