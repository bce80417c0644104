"""The output files on a real filesystem: append, repair after a crash, lock."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, read_jsonl

from chitchat_gen.errors import ConfigError
from chitchat_gen.record import format_record
from chitchat_gen.store import FINAL, FORMATTED, REJECTED, append, clear, close, count_existing, open_store


def record(i):
    return {"task_name": "t", "is_seed": False, "conversation_id": f"id{i}",
            "steps": [{"role": "scenario", "content": "s"}, {"role": "user", "content": f"hi {i}"},
                      {"role": "assistant", "content": f"hello {i}"}]}


def write(folder, n):
    store = open_store(folder)
    for i in range(n):
        append(store, record(i))
    close(store)


def ids(path):
    return [r["conversation_id"] for r in read_jsonl(path)]


def test_append_writes_both_files_in_the_same_order(tmp_path):
    write(tmp_path, 3)
    assert ids(tmp_path / FINAL) == ids(tmp_path / FORMATTED) == ["id0", "id1", "id2"]
    assert read_jsonl(tmp_path / FORMATTED)[1] == {"conversation_id": "id1", "messages": [
        {"role": "user", "content": "hi 1"}, {"role": "assistant", "content": "hello 1"}]}



def test_reopen_counts_existing_and_appends(tmp_path):
    write(tmp_path, 2)
    store = open_store(tmp_path)
    assert store["existing"] == 2
    append(store, record(5))
    close(store)
    assert ids(tmp_path / FINAL) == ["id0", "id1", "id5"]


def test_clear_empties_both_files(tmp_path):
    write(tmp_path, 2)
    store = open_store(tmp_path)
    clear(store)
    append(store, record(9))
    close(store)
    assert ids(tmp_path / FINAL) == ids(tmp_path / FORMATTED) == ["id9"]


def test_a_torn_last_line_is_dropped(tmp_path):
    write(tmp_path, 3)
    with open(tmp_path / FINAL, "a") as out:
        out.write(json.dumps(record(3))[:40])  # the writer died mid-line
    store = open_store(tmp_path)
    close(store)
    assert store["existing"] == 3
    assert ids(tmp_path / FINAL) == ids(tmp_path / FORMATTED) == ["id0", "id1", "id2"]
    rejected = read_jsonl(tmp_path / REJECTED)
    assert [(r["file"], r["line"], r["text"]) for r in rejected] == [(FINAL, 4, json.dumps(record(3))[:40])]
    assert store["notes"] == [f"{FINAL}: moved 1 bad line to {REJECTED} (line 4: torn last line (a run was killed while writing it))"]


def test_a_line_that_is_not_json_says_where_it_breaks_in_whole_words(tmp_path):
    write(tmp_path, 1)
    with open(tmp_path / FINAL, "a") as out:
        out.write('{"conversation_id": "x\ty"}\n')  # a raw tab inside a string: json refuses it
    store = open_store(tmp_path)
    close(store)
    assert store["notes"] == [f"{FINAL}: moved 1 bad line to {REJECTED} "
                              "(line 2: not valid JSON (Invalid control character at column 23))"]


def test_a_missing_formatted_line_is_rebuilt_from_its_record(tmp_path):
    write(tmp_path, 3)
    lines = (tmp_path / FORMATTED).read_text().splitlines(keepends=True)
    (tmp_path / FORMATTED).write_text("".join(lines[:2]) + lines[2][:10])  # killed between the two writes
    close(open_store(tmp_path))
    assert read_jsonl(tmp_path / FORMATTED) == [format_record(record(i)) for i in range(3)]


def test_a_repeated_id_is_kept_once(tmp_path):
    write(tmp_path, 2)
    with open(tmp_path / FINAL, "a") as out:
        out.write(json.dumps(record(0)) + "\n")
    store = open_store(tmp_path)
    close(store)
    assert store["existing"] == 2 and ids(tmp_path / FINAL) == ["id0", "id1"]
    assert ids(tmp_path / FORMATTED) == ["id0", "id1"]
    assert [(r["line"], r["reason"]) for r in read_jsonl(tmp_path / REJECTED)] == [(3, "repeats conversation_id id0 of line 1")]


def test_a_bad_line_in_the_middle_is_moved_with_its_formatted_line_and_counted_without_changes(tmp_path):
    write(tmp_path, 4)
    final_lines = (tmp_path / FINAL).read_text().splitlines(keepends=True)
    final_lines[1] = '{"conversation_id": "id1", "steps": [\n'  # broken by a hand edit
    (tmp_path / FINAL).write_text("".join(final_lines))
    before = (tmp_path / FINAL).read_bytes(), (tmp_path / FORMATTED).read_bytes()
    assert count_existing(tmp_path) == 3
    assert ((tmp_path / FINAL).read_bytes(), (tmp_path / FORMATTED).read_bytes()) == before  # counting changes nothing
    store = open_store(tmp_path)
    close(store)
    assert store["existing"] == 3 and ids(tmp_path / FINAL) == ids(tmp_path / FORMATTED) == ["id0", "id2", "id3"]
    rejected = read_jsonl(tmp_path / REJECTED)
    assert [(r["file"], r["line"]) for r in rejected] == [(FINAL, 2), (FORMATTED, 2)]
    assert rejected[0]["text"] == final_lines[1] and rejected[0]["reason"].startswith("not valid JSON")
    assert json.loads(rejected[1]["text"]) == format_record(record(1))  # its SFT line is kept too
    close(open_store(tmp_path))
    assert len(read_jsonl(tmp_path / REJECTED)) == 2  # a second open finds nothing more to move


# Each lock test runs in subprocesses, once as on Linux and macOS (flock) and once with fcntl made
# unimportable, as on a platform without it (the pid-file fallback); the prelude picks the mode.
LOCK_MODES = {"_flock": "", "_pid_file_lock": "sys.modules['fcntl'] = None"}


def python(mode, code):
    """Popen running `code` in lock mode `mode`, after printing which lock function it got."""
    return subprocess.Popen([sys.executable, "-c", f"import sys\n{LOCK_MODES[mode]}\n"
                             f"sys.path.insert(0, {str(ROOT)!r})\nfrom pathlib import Path\n"
                             "from chitchat_gen.errors import ConfigError\n"
                             "from chitchat_gen.store import _take_lock, close, open_store\n"
                             "print(_take_lock.__name__, flush=True)\n" + code],
                            stdout=subprocess.PIPE, text=True)


def in_use(folder, pid):
    return f"{folder} is in use by another run (pid {pid}): wait for it, or use another --output-dir"


def try_to_open(mode, folder):
    """The lines a run in `mode` prints when it tries to open `folder`: its lock function, then the outcome."""
    run = python(mode, f"""
try:
    close(open_store(Path({str(folder)!r})))
    print("opened")
except ConfigError as exc:
    print(exc)
""")
    return run.communicate(timeout=60)[0].splitlines()


@pytest.mark.parametrize("mode", LOCK_MODES)
def test_a_second_run_on_the_same_folder_is_refused(tmp_path, mode):
    run = python(mode, f"""
folder = Path({str(tmp_path)!r})
store = open_store(folder)
try:
    open_store(folder)
except ConfigError as exc:
    print(exc)
close(store)
close(open_store(folder))
print("free again")
""")
    assert run.communicate(timeout=60)[0].splitlines() == [mode, in_use(tmp_path, run.pid), "free again"]
    assert try_to_open(mode, tmp_path) == [mode, "opened"]


@pytest.mark.parametrize("mode", LOCK_MODES)
def test_a_lock_left_by_a_killed_run_is_free(tmp_path, mode):
    holder = python(mode, f"""
import time
store = open_store(Path({str(tmp_path)!r}))
print("locked", flush=True)
time.sleep(60)
""")
    assert [holder.stdout.readline().strip() for _ in range(2)] == [mode, "locked"]
    assert try_to_open(mode, tmp_path) == [mode, in_use(tmp_path, holder.pid)]
    holder.kill()
    holder.wait()
    assert try_to_open(mode, tmp_path) == [mode, "opened"]  # the kernel dropped the lock, or the dead pid's file was taken over


def test_a_torn_line_cut_inside_a_multibyte_character_is_dropped(tmp_path):
    write(tmp_path, 2)
    with open(tmp_path / FINAL, "ab") as out:
        out.write(json.dumps({"conversation_id": "x", "steps": [{"content": "café"}]}, ensure_ascii=False).encode()[:-6])
    store = open_store(tmp_path)
    close(store)
    assert store["existing"] == 2 and ids(tmp_path / FINAL) == ["id0", "id1"]


def test_a_file_in_the_way_is_a_config_error(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot write to .*--output-dir"):
        open_store(tmp_path / "out" / "task")
