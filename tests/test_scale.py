"""A big folder costs only the new work: the checkpoint that repair reads after, the card's saved
totals, and what happens when either no longer describes the files (real files, the CLI as a process).
"""

import json
import os
import random
import shutil
from pathlib import Path

import pytest
from conftest import read_jsonl, run_cli

from chitchat_gen import store as store_module
from chitchat_gen.record import format_record
from chitchat_gen.stats import FIGURES, card_figures, dataset_stats, render_table
from chitchat_gen.store import (
    CHECKPOINT,
    FINAL,
    FORMATTED,
    IDS,
    REJECTED,
    append,
    close,
    count_existing,
    open_store,
    tail_offset,
)
from chitchat_gen.task import load_task

OUT = Path("output/public/examples/chit_chat")


def record(i, turns=1):
    steps = [{"role": "scenario", "content": f"Someone number {i} talks about bread."}]
    for turn in range(turns):
        steps += [{"role": "flow_controller", "content": "p/a", "terminate": turn == turns - 1},
                  {"role": "user", "content": f"hi {i}, bye"}, {"role": "assistant", "content": f"hello {i}"}]
    return {"task_name": "t", "is_seed": False, "conversation_id": f"id{i}", "steps": steps}


def write(folder, records):
    store = open_store(folder)
    for r in records:
        append(store, r)
    close(store)


def ids(path):
    return [r["conversation_id"] for r in read_jsonl(path)]


@pytest.fixture
def no_full_check(monkeypatch):
    """A function that makes the rest of the test fail if repair reads both files in full."""
    def refuse(*args):
        raise AssertionError("the full check ran")

    def from_now_on():
        monkeypatch.setattr(store_module, "full_repair", refuse)
        monkeypatch.setattr(store_module, "scan", refuse)
    return from_now_on


def test_a_close_leaves_a_checkpoint_and_a_clean_reopen_reads_nothing_but_it(tmp_path, monkeypatch):
    write(tmp_path, [record(i) for i in range(3)])
    assert (tmp_path / CHECKPOINT).is_file() and (tmp_path / IDS).stat().st_size == 3 * 8
    read = []
    real = store_module.read_lines
    monkeypatch.setattr(store_module, "read_lines", lambda path, offset=0, number=0: read.append((path.name, offset))
                        or real(path, offset, number))
    monkeypatch.setattr(store_module, "full_repair", lambda folder: pytest.fail("the full check ran"))
    store = open_store(tmp_path)
    append(store, record(3))
    close(store)
    assert store["existing"] == 3 and [name for name, _ in read] == [FORMATTED, FINAL]
    assert all(offset > 0 for _, offset in read)  # from the checkpoint on, not from the start
    assert count_existing(tmp_path) == 4
    assert ids(tmp_path / FINAL) == ids(tmp_path / FORMATTED) == ["id0", "id1", "id2", "id3"]


def test_a_torn_tail_is_repaired_reading_only_the_tail(tmp_path, no_full_check):
    write(tmp_path, [record(i) for i in range(3)])
    store = open_store(tmp_path)  # a run killed -9: two whole records, the second without its twin, a torn third
    store["final"].write((json.dumps(record(3)) + "\n" + json.dumps(record(4)) + "\n").encode())
    store["formatted"].write((json.dumps(format_record(record(3))) + "\n").encode())
    store["final"].write(json.dumps(record(5))[:30].encode())
    for key in ("final", "formatted"):
        store[key].close()
    store["unlock"]()
    no_full_check()
    store = open_store(tmp_path)
    close(store)
    assert store["existing"] == 5
    assert store["notes"] == [f"{FINAL}: moved 1 bad line to {REJECTED} (line 6: torn last line (a run was killed while writing it))"]
    assert ids(tmp_path / FINAL) == ids(tmp_path / FORMATTED) == [f"id{i}" for i in range(5)]
    assert read_jsonl(tmp_path / FORMATTED)[4] == format_record(record(4))  # the missing twin, rebuilt
    assert [r["text"] for r in read_jsonl(tmp_path / REJECTED)] == [json.dumps(record(5))[:30]]


def test_a_torn_formatted_line_is_cut_and_rebuilt_from_the_tail(tmp_path, no_full_check):
    write(tmp_path, [record(i) for i in range(2)])
    with open(tmp_path / FINAL, "a") as out:
        out.write(json.dumps(record(2)) + "\n")
    with open(tmp_path / FORMATTED, "a") as out:
        out.write(json.dumps(format_record(record(2)))[:25])
    no_full_check()
    close(open_store(tmp_path))
    assert read_jsonl(tmp_path / FORMATTED) == [format_record(record(i)) for i in range(3)]


def test_a_hand_edited_middle_line_is_still_found_with_a_checkpoint(tmp_path):
    write(tmp_path, [record(i) for i in range(5)])
    final = tmp_path / FINAL
    lines = final.read_bytes().splitlines(keepends=True)
    broken = b"{" + b"x" * (len(lines[1]) - 2) + b"\n"  # the same length, in place: size and inode unchanged
    with open(final, "r+b") as out:
        out.seek(len(lines[0]))
        out.write(broken)
    assert count_existing(tmp_path) == 4
    store = open_store(tmp_path)
    close(store)
    assert store["existing"] == 4 and ids(final) == ids(tmp_path / FORMATTED) == ["id0", "id2", "id3", "id4"]
    assert [(r["file"], r["line"]) for r in read_jsonl(tmp_path / REJECTED)] == [(FINAL, 2), (FORMATTED, 2)]


def test_an_id_repeated_after_the_checkpoint_is_found_in_the_whole_file(tmp_path):
    write(tmp_path, [record(i) for i in range(3)])
    with open(tmp_path / FINAL, "a") as out:
        out.write(json.dumps(record(1)) + "\n")
    with open(tmp_path / FORMATTED, "a") as out:
        out.write(json.dumps(format_record(record(1))) + "\n")
    store = open_store(tmp_path)
    close(store)
    assert store["existing"] == 3 and ids(tmp_path / FINAL) == ids(tmp_path / FORMATTED) == ["id0", "id1", "id2"]
    assert [r["reason"] for r in read_jsonl(tmp_path / REJECTED)][0] == "repeats conversation_id id1 of line 2"


@pytest.mark.parametrize("damage", ["deleted", "emptied", "checkpoint of another folder"])
def test_a_missing_formatted_file_or_a_foreign_checkpoint_means_the_full_check(tmp_path, damage):
    write(tmp_path / "a", [record(i) for i in range(4)])
    folder = tmp_path / "a"
    if damage == "deleted":
        (folder / FORMATTED).unlink()
    elif damage == "emptied":
        (folder / FORMATTED).write_text("")
    else:
        write(tmp_path / "b", [record(i) for i in range(10, 12)])
        for name in (CHECKPOINT, IDS):
            shutil.copy(tmp_path / "b" / name, folder / name)
    store = open_store(folder)
    close(store)
    assert store["existing"] == 4
    assert read_jsonl(folder / FORMATTED) == [format_record(record(i)) for i in range(4)]


def test_the_last_lines_start_where_a_count_from_the_end_says(tmp_path):
    draw = random.Random(3)
    lines = [b"x" * draw.randrange(0, 300_000) + b"\n" for _ in range(40)]  # across 1 MB reads
    path = tmp_path / "f"
    path.write_bytes(b"".join(lines))
    for count in (0, 1, 2, 7, 39, 40, 41):
        assert tail_offset(path, count) == sum(map(len, lines[:max(0, len(lines) - count)]))


def recount(folder, task):
    """The card's table of the folder's data counted afresh: a copy with no saved totals beside it."""
    copy = folder.parent / "recount" / FINAL
    copy.parent.mkdir(exist_ok=True)
    shutil.copy(folder / FINAL, copy)
    return render_table(dataset_stats(copy, task, text_figures=False))


def card_table(folder):
    text = (folder / "README.md").read_text(encoding="utf-8")
    return text.split("## Figures")[1].split("```")[1]


def test_the_card_counts_only_new_lines_and_recounts_a_file_its_totals_do_not_describe(task_dir, server):
    assert run_cli("-n", 6, "--quiet", "--base-url", server.url, cwd=task_dir).returncode == 0
    folder, task = task_dir / OUT, load_task(task_dir / "task.yaml")
    saved = json.loads((folder / FIGURES).read_text())
    assert saved["mark"]["size"] == (folder / FINAL).stat().st_size and saved["totals"]["conversations"] == 6
    assert card_table(folder).strip() == recount(folder, task)

    # A hand edit: one conversation replaced by a copy of another with more turns (same inode).
    lines = (folder / FINAL).read_text(encoding="utf-8").splitlines(keepends=True)
    longer = json.loads(lines[0])
    longer["steps"] += longer["steps"][-3:]
    longer["conversation_id"] = "edited"
    lines[2] = json.dumps(longer) + "\n"
    with open(folder / FINAL, "w", encoding="utf-8") as out:
        out.writelines(lines)
    result = run_cli("-n", 6, "--quiet", "--base-url", server.url, cwd=task_dir)
    assert result.returncode == 0, result.stderr
    assert card_table(folder).strip() == recount(folder, task)

    # Totals saved beside another folder's data: never shown for this one.
    other = task_dir / "other"
    shutil.copytree(folder, other)
    shutil.copy(folder / FIGURES, other / FIGURES)
    with open(other / FINAL, "w", encoding="utf-8") as out:
        out.writelines(lines[:3])
    assert card_figures(other, task)["conversations"] == 3


def test_totals_counted_with_other_settings_are_counted_again(task_dir, server):
    assert run_cli("-n", 4, "--quiet", "--base-url", server.url, cwd=task_dir).returncode == 0
    folder, task = task_dir / OUT, load_task(task_dir / "task.yaml")
    saved = json.loads((folder / FIGURES).read_text())
    saved["totals"]["conversations"] = 999  # what another version's gates or settings might have counted
    (folder / FIGURES).write_text(json.dumps(saved))
    assert card_figures(folder, task)["conversations"] == 999  # the same key: trusted
    saved["key"] = "another version"
    (folder / FIGURES).write_text(json.dumps(saved))
    assert card_figures(folder, task)["conversations"] == 4


def test_stats_samples_what_grows_with_n_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr("chitchat_gen.stats.SAMPLE", 5)
    path = tmp_path / FINAL
    path.write_text("".join(json.dumps(record(i % 8)) + "\n" for i in range(20)))
    stats = dataset_stats(path)
    assert stats["sample"] == 5 and stats["scenarios"] == 20 and stats["duplicate_scenarios"] == 12
    assert stats["user_messages"] == 20  # counts and lengths: every conversation
    assert "near in a sample of 5 conversations (of 20)" in render_table(stats)
    assert dataset_stats(path) == stats  # seeded: the same file, the same figures


def test_stats_on_a_folder_matches_a_recount(task_dir, server):
    assert run_cli("-n", 5, "--quiet", "--base-url", server.url, cwd=task_dir).returncode == 0
    folder, task = task_dir / OUT, load_task(task_dir / "task.yaml")
    shutil.copy(folder / FINAL, task_dir / "copy.jsonl")  # no saved totals beside it
    assert dataset_stats(folder / FINAL, task) == dataset_stats(task_dir / "copy.jsonl", task)


def test_a_run_killed_then_resumed_by_the_cli_repairs_its_tail_and_its_card_stays_true(task_dir, server):
    assert run_cli("-n", 5, "--quiet", "--base-url", server.url, cwd=task_dir).returncode == 0
    folder, task = task_dir / OUT, load_task(task_dir / "task.yaml")
    with open(folder / FINAL, "a", encoding="utf-8") as out:  # what kill -9 leaves mid-write
        out.write('{"task_name": "public/examples/chit_chat", "conversation_id": "torn", "st')
    result = run_cli("-n", 7, "--quiet", "--base-url", server.url, cwd=task_dir)
    assert result.returncode == 0, result.stderr
    assert "line 6: torn last line" in result.stderr
    assert ids(folder / FINAL) == ids(folder / FORMATTED) and len(ids(folder / FINAL)) == 7
    assert card_table(folder).strip() == recount(folder, task)
    assert os.path.getsize(folder / IDS) == 7 * 8
