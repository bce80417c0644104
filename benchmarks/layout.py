"""Does a prompt layout change what the gates let through? Asks the user and assistant turns of
conversations already written (a final_data.jsonl) again, once per layout, through the real stage
functions (their retries and gates included), with the same seed for every layout, and counts
the turns each layout gets past the gates. Run by hand:

    python benchmarks/layout.py output/public/examples/chit_chat/final_data.jsonl --engine local
    python benchmarks/layout.py DATA.jsonl --layouts now,benchmarks/prompts_0.2.yaml,mine.yaml --show 3

A layout is `now` (the shipped templates) or a YAML file with a `prompts:` mapping, as a task
file's (benchmarks/prompts_0.2.yaml holds version 0.2's user and assistant templates). The turns
are drawn once (`--turns` of each kind: ordinary user turns, closing turns, assistant turns) and
each is asked from the state the conversation had before it; "paired" counts the turns that one
layout passed and the first layout failed, and the reverse, which is what tells two layouts apart
on a small sample.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import random
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chitchat_gen import load_task, make_chat  # noqa: E402
from chitchat_gen.card import model_name  # noqa: E402
from chitchat_gen.pipeline import new_memory  # noqa: E402
from chitchat_gen.preflight import check_engine  # noqa: E402
from chitchat_gen.prompts import check_override  # noqa: E402
from chitchat_gen.stages import STAGES  # noqa: E402

KINDS = ("user", "closing", "assistant")


def turns_of(records: list[dict]) -> dict:
    """{kind: [(record, index of the step to ask again)]} for every user and assistant step."""
    found = collections.defaultdict(list)
    for record in records:
        flow = None
        for i, step in enumerate(record["steps"]):
            if step["role"] == "flow_controller":
                flow = step
            elif step["role"] == "user":
                found["closing" if flow and flow.get("terminate") else "user"].append((record, i))
            elif step["role"] == "assistant":
                found["assistant"].append((record, i))
    return found


def load_layout(name: str) -> dict:
    """The template overrides of layout `name`: {} for `now`, else a YAML file's `prompts:`."""
    if name == "now":
        return {}
    overrides = yaml.safe_load(Path(name).read_text(encoding="utf-8"))["prompts"]
    for template, text in overrides.items():
        if problem := check_override(template, text):
            sys.exit(f"Error: {name}: prompts.{template}: {problem}")
    return overrides


def ask(task: dict, chat, record: dict, index: int, seed: int) -> tuple[bool, str]:
    """The step at `index` asked again from the state before it: (passed, the text or the drop reason)."""
    step = record["steps"][index]
    stage = next(s for s in task["iteration_stages"] if s["name"] == step["stage_name"])
    before = dict(copy.deepcopy(record), steps=copy.deepcopy(record["steps"][:index]))
    ctx = {"task": task, "memory": new_memory(), "trace": None, "chat": chat, "rng": random.Random(seed),
           "stage": stage, "turn": step["metadata"].get("turn")}
    result = STAGES[step["stage_name"]](before, ctx)
    return (False, result) if isinstance(result, str) else (True, result["steps"][-1]["content"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="a final_data.jsonl")
    parser.add_argument("--engine", default="local")
    parser.add_argument("--model")
    parser.add_argument("--base-url", action="append")
    parser.add_argument("--layouts", default="benchmarks/prompts_0.2.yaml,now")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--turns", type=int, default=40, help="turns of each kind, drawn at random")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show", type=int, default=0, help="print this many replies per layout and kind")
    args = parser.parse_args()
    task = load_task(ROOT / "task.yaml", engine=args.engine, model=args.model, base_url=args.base_url)
    engine = check_engine(task["engine"])
    chat = make_chat(engine)
    records = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    rng, found = random.Random(args.seed), turns_of(records)
    layouts = args.layouts.split(",")
    print(f"engine {engine['type']} / {model_name(engine['type'], task['engine']['model'], engine['model'])}, {args.data}, {time.strftime('%Y-%m-%d')}")
    print(f"{'kind':<10}{'layout':<32}{'pass':>9}{'paired +/-':>12}{'seconds':>9}   most common problem")
    for kind in args.kinds.split(","):
        chosen = rng.sample(found[kind], min(args.turns, len(found[kind])))
        seeds = [rng.randrange(2**31) for _ in chosen]
        first = None
        for layout in layouts:
            laid_out = dict(task, prompts=load_layout(layout))
            start = time.time()
            results = [ask(laid_out, chat, record, index, seed) for (record, index), seed in zip(chosen, seeds)]
            passed = [ok for ok, _ in results]
            first = first or passed
            gained = sum(a and not b for a, b in zip(passed, first))
            lost = sum(b and not a for a, b in zip(passed, first))
            why = collections.Counter(text for ok, text in results if not ok)
            print(f"{kind:<10}{layout[-31:]:<32}{sum(passed):>4}/{len(passed):<4}{f'+{gained}/-{lost}':>12}"
                  f"{time.time() - start:>9.0f}   {', '.join(f'{r} {n}' for r, n in why.most_common(2))}")
            for ok, text in results[:args.show]:
                print(f"{'':>12}{'ok ' if ok else 'no '}{text.replace(chr(10), ' / ')[:110]}")


if __name__ == "__main__":
    main()
