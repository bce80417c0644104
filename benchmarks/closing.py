"""How often does a model pass the closing gate on one attempt? Re-asks the closing turn of
conversations already written (a final_data.jsonl), once per conversation and setting, with a
real model, and checks each reply with the gate of lm/user/guided. Run by hand:

    python benchmarks/closing.py output/public/examples/chit_chat/final_data.jsonl --engine local
    python benchmarks/closing.py DATA.jsonl --engine ollama --model granite4:3b --temperatures 0.3,0.7

Settings:
  history  the whole transcript and the closing instruction in USER_TURN, 160 tokens (how the
           closing was asked before prompts.CLOSING_TURN)
  turn     ours: prompts.CLOSING_TURN, the assistant's last reply only, 64 tokens
A pass is a reply the gate keeps (a goodbye, no placeholder, label, assistant's voice or copied
instruction): 1 - (1 - rate) ** closing_attempts is then the share of closing turns that succeed.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chitchat_gen import load_task, make_chat  # noqa: E402
from chitchat_gen.gates import review, settings_for  # noqa: E402
from chitchat_gen.preflight import check_engine  # noqa: E402
from chitchat_gen.prompts import render  # noqa: E402
from chitchat_gen.record import messages  # noqa: E402
from chitchat_gen.stages import CLOSING_MAX_TOKENS, transcript  # noqa: E402

OLD_NOTE = ("This is your last message: wrap up in a sentence or two, thank the assistant or say goodbye, "
            "and ask nothing new.")


def closing_prompts(record: dict, hint: str) -> dict:
    """{setting: (messages, instruction, max_tokens)} for the closing turn of `record`."""
    steps = record["steps"]
    before = dict(record, steps=steps[:max(i for i, s in enumerate(steps) if s["role"] == "user")])
    said = messages(before)
    history = transcript(before)
    persona = next(s["content"] for s in steps if s["role"] == "persona")
    scenario = next(s["content"] for s in steps if s["role"] == "scenario")
    shared = {"persona": persona, "scenario": scenario, "history": history, "moves": ""}  # as stages.user_side
    blank = dict.fromkeys(shared, "")  # as stages.instruction_of
    system = {"role": "system", "content": render("USER_SYSTEM", {}, **shared)}
    turn = f"{hint} {OLD_NOTE}"
    return {
        "history": ([system, {"role": "user", "content": render("USER_TURN", {}, **shared, hint=turn)}],
                    render("USER_TURN", {}, **blank, hint=turn), 160),
        "turn": ([system, {"role": "user", "content": render("CLOSING_TURN", {}, **shared, last=said[-1]["content"], hint=hint)}],
                 render("CLOSING_TURN", {}, **blank, last="", hint=hint), CLOSING_MAX_TOKENS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="a final_data.jsonl whose conversations end with a closing turn")
    parser.add_argument("--engine", default="local")
    parser.add_argument("--model")
    parser.add_argument("--base-url", action="append")
    parser.add_argument("--settings", default="history,turn")
    parser.add_argument("--temperatures", default="0.7")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show", type=int, default=0, help="print this many replies per setting")
    args = parser.parse_args()
    task = load_task(ROOT / "task.yaml", engine=args.engine, model=args.model, base_url=args.base_url)
    flow = next(s for s in task["iteration_stages"] if s["name"] == "lm/flow_controller")
    hint = next(p["hint"] for p in flow["patterns"] if p["name"] in flow["termination_patterns"])
    engine = check_engine(task["engine"])
    chat = make_chat(engine)
    records = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    print(f"engine {engine['type']} / {engine['model']}, {len(records)} closing turns per setting, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'setting':<10}{'temp':>6}{'pass':>8}{'seconds':>9}   most common problem")
    rng = random.Random(args.seed)
    for setting in args.settings.split(","):
        for temperature in map(float, args.temperatures.split(",")):
            passed, why, shown, start = 0, collections.Counter(), [], time.time()
            for record in records:
                prompt, instruction, cap = closing_prompts(record, hint)[setting]
                reply = chat(prompt, max_tokens=cap, temperature=temperature, seed=rng.randrange(2**31))
                text, _, found = review(reply, "closing", settings_for(task), instruction=instruction)
                passed += bool(text and not found)
                why.update(found[:1] or ([] if text else ["empty"]))
                shown.append(("ok  " if text and not found else "no  ") + text.replace("\n", " / ")[:110])
            common = ", ".join(f"{name} {n}" for name, n in why.most_common(2))
            print(f"{setting:<10}{temperature:>6}{passed:>4}/{len(records):<3}{time.time() - start:>9.0f}   {common}")
            for line in shown[:args.show]:
                print(f"           {line}")


if __name__ == "__main__":
    main()
