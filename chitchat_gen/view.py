"""The viewer: a local web page over an output folder: runs, charts, the conversations as a chat.

    python -m chitchat_gen view output                        # http://127.0.0.1:8765/
    python -m chitchat_gen view output --html report.html     # the same page as one static file

A stdlib `http.server` serves one page (view.html: vanilla JS, inline SVG, nothing fetched from
outside) and these JSON endpoints; `task` is a task folder relative to OUTPUT_DIR:

    GET /api/tasks                                  every task folder: status, counts, runs
    GET /api/stats?task=T                           turns histogram, pattern picks and weights
    GET /api/conversations?task=T&page=0&q=&pattern=&turns=&order=newest
    GET /api/rejected?task=T&page=0&reason=         lines that repair moved to rejected.jsonl
    GET /files/<path>                               a file under OUTPUT_DIR, as plain text

Large files stay fast and memory flat: each final_data.jsonl gets an index of line offsets
(8 bytes a line) plus two small per-line facts (turns, patterns picked), built on first use and
extended as a run appends, so a page is a seek and filters by pattern or turns read only the
lines they show. A text search streams the file. Only paths under OUTPUT_DIR are served.

    >>> index = new_index(); index["offsets"].tolist(), index["end"]
    ([], 0)
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
import webbrowser
from array import array
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ConfigError
from .record import read_jsonl
from .record import turns as count_turns
from .store import FINAL, LOCK, REJECTED, RUNS, lock_holder

PAGE_SIZE = 20
PAGE = Path(__file__).with_name("view.html")
DATA_SLOT = '<script id="data" type="application/json">null</script>'
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Fast path for the per-line facts: plain byte counts over the line as our writer (json.dumps)
# spells it. A line spelled otherwise (another tool's spacing or key order) is parsed in full.
ASSISTANT = b'"role": "assistant"'
PICK = b'"role": "flow_controller", "content": "'


# --- safety ----------------------------------------------------------------------------------

def resolve(root: Path, relative: str) -> Path | None:
    """root / relative if that stays under root (no "..", no absolute path, no link out), else None."""
    parts = Path(relative).parts
    if relative.startswith(("/", "\\")) or ".." in parts or "\x00" in relative:
        return None
    path = (root / relative).resolve()
    return path if path.is_relative_to(root) else None


def data_file(root: Path, task: str, name: str) -> Path | None:
    """The file `name` of a task folder if it is a file under root (not a link out of it), else None."""
    path = resolve(root, f"{task}/{name}")
    return path if path and path.is_file() else None


# --- the folder: task folders, status, runs ------------------------------------------------

def find_tasks(root: Path) -> list[str]:
    """Folders under root (root included, as ".") holding a final_data.jsonl or a runs.jsonl."""
    found = []
    for folder, dirs, files in os.walk(root):  # subtle: does not follow links to folders
        dirs.sort()
        if FINAL in files or RUNS in files:
            found.append(Path(folder).relative_to(root).as_posix())
    return found


def run_status(run: dict) -> str:
    """finished (made what it set out to make), stopped (it did not) or ended (logged before 'wanted')."""
    if not isinstance(run.get("wanted"), int):
        return "ended"
    return "finished" if run.get("accepted", 0) >= run["wanted"] else "stopped"


def task_summary(root: Path, task: str, indexes: dict) -> dict:
    runs_log, final, rejected = (data_file(root, task, name) for name in (RUNS, FINAL, REJECTED))
    runs = [value for _, _, value, _ in read_jsonl(runs_log) if isinstance(value, dict)] if runs_log else []
    for run in runs:
        run["status"] = run_status(run)
    lock = data_file(root, task, LOCK)
    pid = lock_holder(lock.parent) if lock else None
    status = "running" if pid else (runs[-1]["status"] if runs else "no run logged")
    return {"task": task, "status": status, "pid": pid,
            "conversations": len(extend(indexes, final)["offsets"]) if final else 0,
            "rejected": sum(1 for _ in read_jsonl(rejected)) if rejected else 0, "runs": runs,
            "files": sorted(p.name for p in (root / task).iterdir()
                            if not p.name.startswith(".") and data_file(root, task, p.name))}


# --- the index of a final_data.jsonl ---------------------------------------------------------

def new_index() -> dict:
    """Line offsets and per-line facts of one file; `end` is where the indexed whole lines stop."""
    return {"offsets": array("q"), "end": 0, "inode": None, "head": b"", "lock": threading.Lock(),
            "turns": array("H"), "picks": array("Q"), "bits": {}, "turn_counts": Counter(),
            "pick_counts": Counter(), "weights": {}, "termination": set()}


def extend(indexes: dict, path: Path) -> dict:
    """The index of `path`, extended to the whole lines written since the last call.

    A file replaced (repair renames over it) or emptied (--restart) is indexed from the start.
    """
    index = indexes.setdefault(str(path), new_index())
    with index["lock"]:
        stat = path.stat()
        if stat.st_ino != index["inode"] or stat.st_size < index["end"] or _head(path, index) != index["head"]:
            lock = index["lock"]
            index.clear()
            index.update(new_index(), lock=lock, inode=stat.st_ino)
        with open(path, "rb") as lines:
            lines.seek(index["end"])
            carry, base = b"", index["end"]
            while chunk := lines.read(1 << 22):
                carry += chunk
                start = 0
                # subtle: only whole lines are indexed; a line being written waits for its "\n".
                while (newline := carry.find(b"\n", start)) != -1:
                    if carry[start:newline].strip():
                        index["offsets"].append(base + start)
                    start = newline + 1
                base, carry = base + start, carry[start:]
            index["end"] = base
        index["head"] = _head(path, index)
    return index


def _head(path: Path, index: dict) -> bytes:
    """The first bytes of the last indexed line: if they changed, the file was rewritten."""
    if not index["offsets"]:
        return b""
    with open(path, "rb") as lines:
        lines.seek(index["offsets"][-1])
        return lines.read(64)


def extend_facts(index: dict, path: Path) -> None:
    """Turns and patterns picked of every indexed line not seen yet (call after `extend`)."""
    with index["lock"], open(path, "rb") as lines:
        done = len(index["turns"])
        if done == len(index["offsets"]):
            return
        lines.seek(index["offsets"][done])
        for number in range(done, len(index["offsets"])):
            line = lines.readline()
            while line and not line.strip():  # blank lines hold no offset
                line = lines.readline()
            if not line:
                return  # emptied since `extend`: the next call indexes it again
            turns, picks = _facts(line, index, first=number < 20)
            index["turn_counts"][turns] += 1
            index["pick_counts"].update(picks)
            mask = 0
            for name in picks:
                bit = index["bits"].setdefault(name, len(index["bits"]))
                mask |= 1 << bit if bit < 64 else 0  # past 64 patterns, filters skip the rest
            index["turns"].append(min(turns, 65535))
            index["picks"].append(mask)


def _facts(line: bytes, index: dict, first: bool) -> tuple[int, list[str]]:
    turns, picks, start = line.count(ASSISTANT), [], line.find(PICK)
    while start != -1:
        end = line.find(b'"', start + len(PICK))
        picks.append(line[start + len(PICK):end])
        start = line.find(PICK, end)
    if turns and len(picks) == line.count(b'"flow_controller"') and not first \
            and not any(b"\\" in pick for pick in picks):
        return turns, [pick.decode("utf-8", errors="replace") for pick in picks]
    # The first lines are parsed in full for the weights; so is any line the fast path misses.
    try:
        record = json.loads(line)
        steps = [s for s in record.get("steps") or () if isinstance(s, dict)]
    except (ValueError, AttributeError):
        return 0, []
    flows = [s for s in steps if s.get("role") == "flow_controller"]
    for step in flows:
        index["weights"].update(step.get("weights") or {})
        if step.get("terminate"):
            index["termination"].add(str(step.get("content")))
    return count_turns(steps), [str(s.get("content")) for s in flows]


def dataset_figures(indexes: dict, path: Path) -> dict:
    """The charts' figures: turns histogram, pattern picks, the weights seen on the records."""
    index = extend(indexes, path)
    extend_facts(index, path)
    return {"conversations": len(index["turns"]),
            "turns": {str(k): v for k, v in sorted(index["turn_counts"].items())},
            "patterns": dict(index["pick_counts"].most_common()),
            "weights": index["weights"], "termination": sorted(index["termination"])}


# --- pages of conversations ------------------------------------------------------------------

def conversation_page(indexes: dict, path: Path, page: int = 0, q: str = "", pattern: str = "",
                      turns: int | None = None, order: str = "newest") -> dict:
    """One page of records, newest or oldest first, filtered by text, pattern picked and turns."""
    index = extend(indexes, path)
    numbers = range(len(index["offsets"]))
    if order == "newest":
        numbers = numbers[::-1]
    if pattern or turns is not None:
        extend_facts(index, path)
        bit = index["bits"].get(pattern)
        if pattern and (bit is None or bit >= 64):
            numbers = []
        else:
            mask = 1 << bit if pattern else 0
            numbers = [n for n in numbers if (turns is None or index["turns"][n] == turns)
                       and index["picks"][n] & mask == mask]
    if q:
        numbers = _search(path, index, numbers, q)
    shown = numbers[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
    with open(path, "rb") as lines:
        items = [_item(lines, index, n) for n in shown]
    return {"total": len(index["offsets"]), "matched": len(numbers), "page": page, "page_size": PAGE_SIZE,
            "items": items}


def _item(lines, index: dict, number: int) -> dict:
    lines.seek(index["offsets"][number])
    text = lines.readline().decode("utf-8", errors="replace")
    try:
        return {"line": number + 1, "record": json.loads(text)}
    except ValueError as exc:
        return {"line": number + 1, "problem": f"not valid JSON ({exc})", "text": text[:2000]}


def _search(path: Path, index: dict, numbers, q: str) -> list[int]:
    """The line numbers whose scenario, persona, hints or messages contain q (any case), streaming."""
    q = q.lower()
    # A line can only match if its raw JSON holds q as written; skip the parse for the others.
    raw = q.encode() if q.isascii() and '"' not in q and "\\" not in q else None
    found = []
    with open(path, "rb") as lines:
        for number in numbers:
            lines.seek(index["offsets"][number])
            line = lines.readline()
            if raw is not None and raw not in line.lower():
                continue
            try:
                steps = json.loads(line).get("steps") or ()
            except (ValueError, AttributeError):
                continue
            if any(q in str(s.get(key) or "").lower() for s in steps if isinstance(s, dict)
                   for key in ("content", "hint")):
                found.append(number)
    return found


def rejected_rows(path: Path | None) -> list[dict]:
    """Lines repair moved to rejected.jsonl, newest first, each with `kind`: its reason in general."""
    rows = []
    for _, text, value, problem in read_jsonl(path) if path else ():
        value = value if isinstance(value, dict) else {"reason": problem, "text": text}
        rows.append({**value, "kind": _reason_kind(str(value.get("reason")))})
    return rows[::-1]


def rejected_page(path: Path | None, page: int = 0, reason: str = "") -> dict:
    rows = rejected_rows(path)
    reasons = Counter(row["kind"] for row in rows)
    rows = [row for row in rows if not reason or row["kind"] == reason]
    return {"matched": len(rows), "page": page, "page_size": PAGE_SIZE, "reasons": dict(reasons.most_common()),
            "items": rows[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]}


def _reason_kind(reason: str) -> str:
    """A reason without its specifics ("repeats conversation_id X of line 3" -> "repeats conversation_id")."""
    return re.sub(r"\s*(\(.*|[0-9a-f]{32}.*| of line \d+.*)$", "", reason)


# --- the server ------------------------------------------------------------------------------

def make_handler(root: Path, indexes: dict, loopback: bool) -> type[BaseHTTPRequestHandler]:
    """The request handler class for one viewed folder: `ViewHandler` bound to `root`, the files'
    `indexes` (shared by its threads) and, when `loopback`, the Host check of a local address."""
    return type("Handler", (ViewHandler,), {"root": root, "indexes": indexes, "loopback": loopback,
                                        "page": PAGE.read_bytes()})


# The pages of one task folder, after the task and the page number are checked: each takes the
# same arguments (`final` is the task's final_data.jsonl, None before there is one) and returns JSON.
def _stats_page(root: Path, indexes: dict, task: str, final: Path | None, number: int, params: dict) -> dict:
    return dataset_figures(indexes, final) if final else {}


def _conversations_page(root: Path, indexes: dict, task: str, final: Path | None, number: int, params: dict) -> dict:
    if not final:
        return {"total": 0, "matched": 0, "page": 0, "page_size": PAGE_SIZE, "items": []}
    turns = int(params["turns"]) if params.get("turns") else None
    return conversation_page(indexes, final, number, params.get("q", ""), params.get("pattern", ""), turns,
                             params.get("order", "newest"))


def _rejected_page(root: Path, indexes: dict, task: str, final: Path | None, number: int, params: dict) -> dict:
    return rejected_page(data_file(root, task, REJECTED), number, params.get("reason", ""))


TASK_PAGES = {"/api/stats": _stats_page, "/api/conversations": _conversations_page, "/api/rejected": _rejected_page}


class ViewHandler(BaseHTTPRequestHandler):
    """The viewer's requests over `root` (set by `make_handler`, with `indexes`, `loopback` and
    `page`, the bytes of view.html): the page, the files, the JSON endpoints of the module's docstring."""

    root: Path
    indexes: dict
    loopback: bool
    page: bytes

    def log_message(self, *args):
        pass  # one line per poll would bury the terminal

    def do_GET(self):
        url = urlsplit(self.path)
        params = {key: values[-1] for key, values in parse_qs(url.query).items()}
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if self.loopback and host not in LOOPBACK:
            # A page on another site must not read your data by pointing its name at 127.0.0.1.
            return self._send(403, {"error": f"host {host!r} refused: open http://127.0.0.1:PORT/"})
        try:
            self._answer(url.path, params)
        except ValueError as exc:
            self._send(400, {"error": f"bad parameter: {exc}"})

    def _answer(self, path: str, params: dict) -> None:
        """Route one GET: the page, a file, the task list, else a task's page (task and page number checked first)."""
        if path == "/":
            return self._send(200, self.page, "text/html; charset=utf-8")
        if path.startswith("/files/"):
            return self._file(unquote(path[len("/files/"):]))
        if path == "/api/tasks":
            return self._send(200, [task_summary(self.root, t, self.indexes) for t in find_tasks(self.root)])
        task = params.get("task", "")
        if not self._known(task):
            return
        number, final = int(params.get("page", 0)), data_file(self.root, task, FINAL)
        if number < 0 or params.get("order", "newest") not in ("newest", "oldest"):
            raise ValueError("page is a number >= 0, order is newest or oldest")
        if path in TASK_PAGES:
            return self._send(200, TASK_PAGES[path](self.root, self.indexes, task, final, number, params))
        self._send(404, {"error": f"no such page: {path}"})

    def _known(self, task: str) -> bool:
        """True for a task folder under root; else answers 403 (outside) or 404 (no such task)."""
        if resolve(self.root, task) is None:
            self._send(403, {"error": f"{task!r} is not under the viewed folder"})
            return False
        if task not in find_tasks(self.root):
            self._send(404, {"error": f"no task folder {task!r}"})
            return False
        return True

    def _file(self, relative: str) -> None:
        path = resolve(self.root, relative)
        if path is None:
            return self._send(403, {"error": f"{relative!r} is not under the viewed folder"})
        if not path.is_file():
            return self._send(404, {"error": f"no file {relative!r}"})
        # Plain text whatever the name: a .html someone dropped in the folder is not run as a page.
        # Streamed, and only the bytes there when it was opened (a run may be appending).
        with open(path, "rb") as data:
            left = os.fstat(data.fileno()).st_size
            self._headers(200, "text/plain; charset=utf-8", left)
            while left and (chunk := data.read(min(1 << 20, left))):
                self.wfile.write(chunk)
                left -= len(chunk)

    def _send(self, status: int, body, kind: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        self._headers(status, kind, len(data))
        self.wfile.write(data)

    def _headers(self, status: int, kind: str, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()


def serve(root: Path, host: str = "127.0.0.1", port: int = 8765, open_page: bool = False) -> None:
    """Serve the viewer until Ctrl-C; print the address first (port 0: any free port)."""
    root = _checked_root(root)
    try:
        httpd = ThreadingHTTPServer((host, port), make_handler(root, {}, host in LOOPBACK))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} is in use: choose another with --port (0 picks a free one)")
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}): check --host and --port")
    httpd.daemon_threads = True
    url = f"http://{host if ':' not in host else f'[{host}]'}:{httpd.server_address[1]}/"
    print(f"Viewing {root} at {url} (Ctrl-C to stop)", flush=True)
    if open_page:
        webbrowser.open(url)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


def _checked_root(root: Path) -> Path:
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder: pass an output folder, e.g. 'output' (a run's --output-dir)")
    return root.resolve()


# --- the static report -----------------------------------------------------------------------

def write_html(root: Path, out: Path) -> int:
    """The page with every task, figure and conversation inlined, as one file; returns conversations.

    Streams the records into the file, so memory holds one record at a time.
    """
    root, indexes, written = _checked_root(root), {}, 0
    before, after = PAGE.read_text(encoding="utf-8").split(DATA_SLOT)
    try:
        output = open(out, "w", encoding="utf-8", newline="\n")
    except OSError as exc:
        raise ConfigError(f"cannot write {out} ({exc.strerror}): choose another path with --html")
    with output:
        output.write(before + '<script id="data" type="application/json">{"tasks": ')
        tasks = [task_summary(root, task, indexes) for task in find_tasks(root)]
        output.write(_inline(tasks) + ', "stats": {')
        for i, task in enumerate(tasks):
            final = data_file(root, task["task"], FINAL)
            output.write(("," if i else "") + _inline(task["task"]) + ": "
                         + _inline(dataset_figures(indexes, final) if final else {}))
        output.write('}, "rejected": {')
        for i, task in enumerate(tasks):
            rows = rejected_rows(data_file(root, task["task"], REJECTED))
            output.write(("," if i else "") + _inline(task["task"]) + ": " + _inline(rows))
        output.write('}, "conversations": {')
        for i, task in enumerate(tasks):
            output.write(("," if i else "") + _inline(task["task"]) + ": [")
            final, comma = data_file(root, task["task"], FINAL), ""
            for number, _, record, _ in read_jsonl(final) if final else ():
                if isinstance(record, dict):
                    output.write(comma + _inline({"line": number, "record": record}) + "\n")
                    comma, written = ",", written + 1
            output.write("]")
        output.write("}}</script>" + after)
    return written


def _inline(value) -> str:
    # subtle: JSON inside <script> must not contain "</script" or "<!--"; "<" only occurs inside
    # strings in JSON, where \u003c means the same character.
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")
