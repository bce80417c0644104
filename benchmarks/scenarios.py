"""How varied are the scenarios? Runs only the lm/scenario stage, K times per setting, with a
real model, and prints duplicate figures per setting. Run by hand:

    python benchmarks/scenarios.py --engine local -k 60
    python benchmarks/scenarios.py --engine ollama --model granite4:3b -k 100

With --fake, no model: a stand-in whose scenarios vary over seven slots (what the person is
like, who, where, what they want, the topic, when, how: "A shy nurse in Leeds is curious about
pottery this weekend on a budget.") runs the stage N = 100, 300 and 1,000 times on one memory,
and counts the copy check's drops and retries at each N (they should stay flat: the more it
remembers, the more a loose check finds to call a copy); then the stage's client CPU per call,
-k calls timed on a memory of 100 scenarios (100 + k by the end) and of 1,000 (its limit):

    python benchmarks/scenarios.py --fake

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
from chitchat_gen.pipeline import new_memory  # noqa: E402
from chitchat_gen.preflight import check_engine  # noqa: E402
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
    stage = dict(scenario_stage(task), near_duplicate_threshold=threshold)
    memory = new_memory()
    rng = random.Random(seed)
    scenarios, drops, calls = [], collections.Counter(), [0]

    def counted(messages, json_schema=None, **options):
        calls[0] += 1
        return chat(messages, json_schema=json_schema, temperature=temperature, **options)

    for _ in range(k):
        if seeds_only:
            memory = new_memory()
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


SLOTS = [  # the fake's seven slots: 8 x 8 x 8 x 6 x 12 x 6 x 6 = 1.3 million scenarios
    ["retired", "nervous", "busy", "cheerful", "curious", "young", "shy", "homesick"],
    ["teacher", "nurse", "bus driver", "accountant", "chef", "plumber", "student", "librarian"],
    ["in Leeds", "from Nairobi", "in Wales", "in Toronto", "in Ohio", "from Lagos", "in Melbourne", "near Osaka"],
    ["wants to chat about", "is curious about", "would like tips on", "wants to get started with",
     "is looking for advice on", "wants to share a story about"],
    ["birdwatching", "astronomy", "sourdough baking", "marathon training", "growing tomatoes", "the ukulele",
     "keeping chickens", "fly fishing", "learning Japanese", "pottery", "houseplants", "chess"],
    ["this weekend", "before a trip", "after a long week", "on a rainy Sunday", "over the holidays",
     "on the train to work"],
    ["with a friend", "for the first time", "to impress a partner", "as a break from screens", "to meet people",
     "on a budget"],
]
SIZES = (100, 300, 1000)


def fake_scenario(messages, json_schema=None, seed=0, **options) -> str:
    """A scenario from the seven slots, drawn by the call's seed."""
    rng = random.Random(seed)
    trait, *rest = (rng.choice(values) for values in SLOTS)
    return " ".join(["An" if trait[0] in "aeiou" else "A", trait, *rest]) + "."


def scenario_stage(task: dict) -> dict:
    return next(s for s in task["initialization_stages"] if s["name"] == "lm/scenario")


def copy_drops(task, seed):
    """(drops, retries) of the copy check, the stage run SIZES[-1] times on one memory, counted at each of SIZES."""
    stage = scenario_stage(task)
    memory, rng, dropped, calls, figures = new_memory(), random.Random(seed), 0, [0], {}

    def counted(messages, json_schema=None, **options):
        calls[0] += 1
        return fake_scenario(messages, json_schema, **options)

    for n in range(1, SIZES[-1] + 1):
        ctx = {"task": task, "chat": counted, "rng": random.Random(rng.randrange(2**63)), "stage": stage,
               "memory": memory}
        dropped += STAGES["lm/scenario"]({"steps": []}, ctx) == "scenario: copies a seed or an earlier scenario"
        if n in SIZES:
            figures[n] = dropped, calls[0] - n
    return figures


def cost_per_call(task, remembered, calls, seed):
    """Microseconds of client CPU per lm/scenario call (the fake's reply included) with `remembered` scenarios kept."""
    stage, rng = scenario_stage(task), random.Random(seed)
    memory = new_memory({"steps": [{"role": "scenario", "content": fake_scenario([], seed=rng.randrange(2**63))}]}
                        for _ in range(remembered))
    contexts = [{"task": task, "chat": fake_scenario, "rng": random.Random(rng.randrange(2**63)), "stage": stage,
                 "memory": memory} for _ in range(calls)]
    start = time.process_time()
    for ctx in contexts:
        STAGES["lm/scenario"]({"steps": []}, ctx)
    return (time.process_time() - start) / calls * 1e6


def main_fake(args) -> None:
    task = load_task(ROOT / "task.yaml")
    print(f"fake scenarios over seven slots, seed {args.seed}, {time.strftime('%Y-%m-%d')}")
    figures = copy_drops(task, args.seed)
    print("copy check, drops (retries): " + ", ".join(f"N={n}: {d} = {d / n:.1%} ({r})" for n, (d, r) in figures.items()))
    costs = {n: cost_per_call(task, n, args.k, args.seed) for n in (100, 1000)}
    print("lm/scenario per call (client CPU): " + ", ".join(f"{n} remembered: {us:,.0f} us" for n, us in costs.items())
          + f"; ratio {costs[1000] / costs[100]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="local")
    parser.add_argument("--model")
    parser.add_argument("--base-url", action="append")
    parser.add_argument("-k", type=int, default=60, help="scenarios per setting (with --fake: calls timed)")
    parser.add_argument("--settings", default="ABCD")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fake", action="store_true", help="no model: the copy check's drops and cost (see above)")
    args = parser.parse_args()
    if args.fake:
        return main_fake(args)
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
