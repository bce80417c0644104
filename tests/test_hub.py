"""The output folder as a Hugging Face dataset: the card's metadata block, and `export` to the
OpenAI and ShareGPT formats. The load with the real `datasets` library is slow (extra `hf`)."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, outputs, read_jsonl, run_cli

from chitchat_gen.card import size_category

FOLDER = "output/public/examples/chit_chat"


def metadata(task_dir) -> dict:
    text = (task_dir / FOLDER / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_card_opens_with_hub_metadata_naming_files_that_exist(task_dir, server):
    assert run_cli("-n", 3, "--base-url", server.url, "--quiet", cwd=task_dir).returncode == 0
    meta = metadata(task_dir)
    assert meta["task_categories"] == ["text-generation"] and meta["language"] == ["en"]
    assert set(meta["tags"]) == {"synthetic", "conversational"} and meta["size_categories"] == ["n<1K"]
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"default", "full"} and configs["default"]["default"] is True
    files = {c["config_name"]: [f["path"] for f in c["data_files"]] for c in meta["configs"]}
    assert files == {"default": ["formatted_output.jsonl"], "full": ["final_data.jsonl"]}
    assert all((task_dir / FOLDER / f).is_file() for paths in files.values() for f in paths)
    assert (task_dir / FOLDER / "runs.jsonl").is_file()  # there, and in no config
    # No license chosen: the key is left out (not `other`) and the card asks for a choice.
    assert "license" not in meta and "No license chosen yet" in (task_dir / FOLDER / "README.md").read_text()


def test_license_from_the_flag_the_task_file_or_a_hand_edit_is_kept_on_resume(task_dir, server):
    assert run_cli("-n", 2, "--base-url", server.url, "--quiet", "--license", "cc-by-4.0", cwd=task_dir).returncode == 0
    assert metadata(task_dir)["license"] == "cc-by-4.0"
    assert run_cli("-n", 3, "--base-url", server.url, "--quiet", cwd=task_dir).returncode == 0  # no flag: kept
    assert metadata(task_dir)["license"] == "cc-by-4.0"
    card = task_dir / FOLDER / "README.md"
    card.write_text(card.read_text().replace("license: cc-by-4.0", "license: mit"))
    assert run_cli("-n", 4, "--base-url", server.url, "--quiet", cwd=task_dir).returncode == 0
    assert metadata(task_dir)["license"] == "mit" and "No license chosen" not in card.read_text()
    task = task_dir / "task.yaml"
    task.write_text(task.read_text() + "license: apache-2.0\nlanguage: fr\n")
    assert run_cli("-n", 5, "--base-url", server.url, "--quiet", cwd=task_dir).returncode == 0
    assert metadata(task_dir)["license"] == "apache-2.0" and metadata(task_dir)["language"] == ["fr"]


def test_size_categories_follow_the_hubs_buckets():
    assert [size_category(n) for n in (0, 999, 1000, 9999, 10_000, 999_999, 10 ** 6)] == \
        ["n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M"]


@pytest.fixture
def generated(task_dir, server):
    assert run_cli("-n", 6, "--base-url", server.url, "--quiet", cwd=task_dir).returncode == 0
    return task_dir


@pytest.mark.parametrize("system", [None, "You are a kind assistant."])
def test_export_openai_round_trips(generated, system):
    args = ["export", FOLDER, "--format", "openai"] + (["--system", system] if system else [])
    result = run_cli(*args, cwd=generated)
    assert result.returncode == 0 and result.stderr == ""
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    _, formatted = outputs(generated)
    assert len(lines) == len(formatted) == 6
    for line, record in zip(lines, formatted):
        assert set(line) == {"messages"}
        expected = ([{"role": "system", "content": system}] if system else []) + record["messages"]
        assert line["messages"] == expected


def test_export_sharegpt_to_a_file_maps_roles(generated):
    result = run_cli("export", FOLDER, "--format", "sharegpt", "--system", "Be brief.", "-o", "sg.jsonl", cwd=generated)
    assert result.returncode == 0 and "6 conversations written to sg.jsonl" in result.stderr and result.stdout == ""
    lines = read_jsonl(generated / "sg.jsonl")
    _, formatted = outputs(generated)
    assert [line["id"] for line in lines] == [record["conversation_id"] for record in formatted]
    for line, record in zip(lines, formatted):
        assert line["conversations"][0] == {"from": "system", "value": "Be brief."}
        back = [{"role": {"human": "user", "gpt": "assistant"}[turn["from"]], "content": turn["value"]}
                for turn in line["conversations"][1:]]
        assert back == record["messages"]


def test_export_of_a_missing_folder_is_one_error_line(tmp_path):
    result = run_cli("export", "nope", "--format", "openai", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("Error: nope not found: ")
    assert len(result.stderr.splitlines()) == 1


def test_export_of_a_corrupt_line_names_it_and_leaves_an_earlier_export_as_it_was(generated):
    (generated / "train.jsonl").write_text("earlier export\n")
    final = generated / FOLDER / "final_data.jsonl"
    lines = final.read_text().splitlines(keepends=True)
    final.write_text("".join(lines[:3] + ['{"broken\n'] + lines[3:]))
    result = run_cli("export", FOLDER, "--format", "openai", "-o", "train.jsonl", cwd=generated)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"Error: {FOLDER}/final_data.jsonl line 4: not valid JSON")
    assert (generated / "train.jsonl").read_text() == "earlier export\n"
    assert sorted(os.listdir(generated)) == sorted(["task.yaml", "personas.jsonl", "seed_examples.jsonl",
                                                    "output", "train.jsonl"])  # no half file left behind


def test_export_needs_a_format(generated):
    result = run_cli("export", FOLDER, cwd=generated)
    assert result.returncode == 2 and result.stderr.startswith("Error: the following arguments are required: --format")


NEEDS_DATASETS = pytest.mark.skipif(importlib.util.find_spec("datasets") is None,
                                    reason="needs the 'hf' extra: pip install -e '.[hf]'")
SFT_COLUMNS = ["conversation_id", "messages"]
FULL_COLUMNS = ["task_name", "is_seed", "conversation_id", "steps"]


@pytest.mark.slow
@NEEDS_DATASETS
def test_datasets_loads_the_folder_both_ways(generated, tmp_path, monkeypatch):
    """The card's configs, as the Hub reads them: loaded by folder into a cache of its own."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local folder: nothing to fetch
    from datasets import load_dataset
    folder = str(generated / FOLDER)
    # Repair's quarantine, of yet another shape, sits beside runs.jsonl: neither may leak into a config.
    (generated / FOLDER / "rejected.jsonl").write_text('{"file": "final_data.jsonl", "line": 3, "text": "{"}\n')
    sft = load_dataset(folder, cache_dir=str(tmp_path / "cache"))
    assert list(sft) == ["train"] and sft["train"].num_rows == 6
    assert sft["train"].column_names == SFT_COLUMNS
    assert sft["train"][0]["messages"] == outputs(generated)[1][0]["messages"]
    full = load_dataset(folder, "full", cache_dir=str(tmp_path / "cache"))
    assert full["train"].num_rows == 6
    assert full["train"].column_names == FULL_COLUMNS
    roles = [step["role"] for step in full["train"][0]["steps"]]
    assert roles[:3] == ["persona", "scenario", "flow_controller"] and roles.count("assistant") >= 2
    # The Hub's viewer serves Parquet converted from the files: the every-step config must convert too.
    full["train"].to_parquet(str(tmp_path / "full.parquet"))


# Runs the lines it reads on stdin in a fresh interpreter (so HF_HOME is read at import), then
# prints, for each DatasetDict they made, each split's columns and conversation ids.
LOADER = """
import json, sys
from datasets import DatasetDict
namespace = {}
exec(sys.stdin.read(), namespace)
print(json.dumps([[name, split, data[split].column_names, list(data[split]["conversation_id"])]
                  for name, data in namespace.items() if isinstance(data, DatasetDict) for split in data]))
"""


def documented_loads(task_dir, hf_home) -> list:
    """What docs/outputs.md's lines and the folder's card's lines load, as written, run in task_dir."""
    readme = re.search(r"```py\n(from datasets import load_dataset\n.*?)```", (ROOT / "docs/outputs.md").read_text(), re.S)
    card = re.search(r"```python\n(from datasets import load_dataset\n.*?)```",
                     (task_dir / FOLDER / "README.md").read_text(), re.S)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", LOADER], input=readme.group(1) + card.group(1), cwd=task_dir,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.slow
@NEEDS_DATASETS
def test_the_documented_load_gives_this_folders_rows_in_a_shared_cache(tmp_path, server):
    hf_home = tmp_path / "hf"  # one cache for every load, as on a user's machine
    first, second = tmp_path / "first", tmp_path / "second"  # both write output/public/examples/chit_chat
    for task_dir, n in ((first, 4), (second, 2)):
        task_dir.mkdir()
        for name in ("task.yaml", "personas.jsonl", "seed_examples.jsonl"):
            shutil.copy(ROOT / name, task_dir / name)
        assert run_cli("-n", n, "--base-url", server.url, "--quiet", cwd=task_dir).returncode == 0

    def expected(task_dir):
        ids = [record["conversation_id"] for record in outputs(task_dir)[0]]
        return [["chats", "train", SFT_COLUMNS, ids], ["steps", "train", FULL_COLUMNS, ids],  # README.md
                ["sft", "train", SFT_COLUMNS, ids], ["full", "train", FULL_COLUMNS, ids]]     # the card

    for task_dir in (first, second, first):  # the same name in one cache: neither folder may answer for the other
        assert documented_loads(task_dir, hf_home) == expected(task_dir)
    assert len(expected(first)[0][3]) == 4 and len(expected(second)[0][3]) == 2
    # Grown by a resume (and its card rewritten with the same metadata block): the new rows load too.
    assert run_cli("-n", 7, "--base-url", server.url, "--quiet", cwd=first).returncode == 0
    assert documented_loads(first, hf_home) == expected(first) and len(expected(first)[0][3]) == 7
    assert documented_loads(second, hf_home) == expected(second)
