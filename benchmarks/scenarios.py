"""How varied are the scenarios? Runs only the lm/scenario stage, K times per setting, with a
real model, and prints duplicate figures per setting. Run by hand:

    python benchmarks/scenarios.py --engine local -k 60
    python benchmarks/scenarios.py --engine ollama --model granite4:3b -k 100

Settings, from DiGiT's failure mode to ours:
  A  seeds-only examples, no topic hint, temperature 0 (DiGiT's chit-chat at temperature 0)
  B  seeds-only examples, no topic hint, temperature 0.7
  C  ours: seeds + earlier scenarios as examples, a random topic hint, temperature 0.7
  D  C plus near_duplicate_threshold: 0.5 (retry once, then drop)
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chitchat_gen import load_task, make_chat  # noqa: E402
from chitchat_gen.engines import check_engine  # noqa: E402
from chitchat_gen.prompts import SCENARIO_USER  # noqa: E402
from chitchat_gen.stages import STAGES  # noqa: E402
from chitchat_gen.stats import near_duplicates  # noqa: E402
from chitchat_gen.text import jaccard, normalise, shingles  # noqa: E402

TOPIC_SENTENCE = "Pick a topic that is clearly different from every example above (for instance: $topic_hint). "
NO_TOPIC_HINT = SCENARIO_USER.template.replace(TOPIC_SENTENCE, "")
assert NO_TOPIC_HINT != SCENARIO_USER.template, "the topic sentence of SCENARIO_USER changed: update TOPIC_SENTENCE"

SETTINGS = {  # name: (seeds only, prompt override, temperature, near-duplicate threshold)
    "A": (True, NO_TOPIC_HINT, 0.0, None),
    "B": (True, NO_TOPIC_HINT, 0.7, None),
    "C": (False, None, 0.7, None),
    "D": (False, None, 0.7, 0.5),
}


def run_setting(task, chat, k, seeds_only, prompt, temperature, threshold, seed):
    task = dict(task, prompts={"SCENARIO_USER": prompt} if prompt else {})
    stage = dict(next(s for s in task["initialization_stages"] if s["name"] == "lm/scenario"),
                 near_duplicate_threshold=threshold)
    memory = {"scenarios": collections.deque(maxlen=1000)}
    rng = random.Random(seed)
    scenarios, drops, calls = [], collections.Counter(), [0]

    def counted(messages, json_schema=None, **options):
        calls[0] += 1
        return chat(messages, json_schema=json_schema, temperature=temperature, **options)

    for _ in range(k):
        if seeds_only:
            memory["scenarios"].clear()
        ctx = {"task": task, "chat": counted, "rng": random.Random(rng.randrange(2**63)), "stage": stage, "memory": memory}
        result = STAGES["lm/scenario"]({"steps": []}, ctx)
        if isinstance(result, str):
            drops[result] += 1
        else:
            scenarios.append(result["steps"][0]["content"])
    seeds = task["seed_scenarios"]
    seed_grams = [shingles(s) for s in seeds]
    close_to_seed = sum(1 for s in scenarios if any(jaccard(shingles(s), g) >= 0.5 for g in seed_grams))
    normalised = [normalise(s) for s in scenarios]
    return {"kept": len(scenarios), "dropped": sum(drops.values()), "calls": calls[0],
            "exact_dup": len(normalised) - len(set(normalised)), "near_dup": near_duplicates(scenarios),
            "close_to_seed": close_to_seed, "examples": scenarios[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="local")
    parser.add_argument("--model")
    parser.add_argument("--base-url", action="append")
    parser.add_argument("-k", type=int, default=60, help="scenarios per setting")
    parser.add_argument("--settings", default="ABCD")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    task = load_task(ROOT / "task.yaml", engine=args.engine, model=args.model, base_url=args.base_url)
    engine = check_engine(task["engine"])
    chat = make_chat(engine)
    print(f"engine {engine['type']} / {engine['model']}, {args.k} scenarios per setting, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'setting':<8}{'kept':>6}{'dropped':>9}{'calls':>7}{'exact dup':>11}{'near dup':>10}{'near a seed':>13}")
    for name in args.settings:
        result = run_setting(task, chat, args.k, *SETTINGS[name], seed=args.seed)
        kept = max(1, result["kept"])
        print(f"{name:<8}{result['kept']:>6}{result['dropped']:>9}{result['calls']:>7}"
              f"{result['exact_dup'] / kept:>11.0%}{result['near_dup'] / kept:>10.0%}{result['close_to_seed'] / kept:>13.0%}")
        for example in result["examples"]:
            print(f"         e.g. {example[:100]}")


if __name__ == "__main__":
    main()
