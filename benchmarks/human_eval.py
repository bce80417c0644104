"""The quality gates on text people wrote: what they do to it that they should not.

Reads benchmarks/data (turns from the Chit-Chat Challenge dataset, labelled by reading, and
messages of ours in the style of capable chat models; its README says which is which) and
prints, as docs/quality.md shows them:

- per gate, the share of ordinary human turns it cleans or rejects, in the user's place and in
  the assistant's (an assistant reply read against the turn it answers);
- the closing check (gates.is_closing) on goodbyes and on closing messages that are not:
  recall and false accepts, and how many goodbyes the whole closing turn's review keeps; and
  what the gates do to people's goodbyes read as the assistant's answer to one (`farewell`);
- paragraphs, lists and code blocks: messages whose text review returned unchanged when no
  gate cut anything, and whose lines it kept when one did.

    python benchmarks/human_eval.py            # the tables
    python benchmarks/human_eval.py --misses   # and every message the closing check gets wrong

No network and no package beyond chitchat_gen: the data is in the repository.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chitchat_gen.gates import GATES, is_closing, review  # noqa: E402

DATA = ROOT / "benchmarks" / "data"


def load(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def gate_rates(turns: list[dict]) -> list[tuple]:
    """(gate, kinds it reads, share changed or rejected as a user turn, as an assistant reply)."""
    hits = {kind: collections.Counter() for kind in ("user", "assistant")}
    for turn in turns:
        for kind in hits:
            text, fixes, found = review(turn["text"], kind, previous=turn["previous"] if kind == "assistant" else "")
            for label in {*fixes, *found}:
                hits[kind][label] += 1
            if text != turn["text"].strip() and not fixes:
                hits[kind]["(whitespace: no gate named)"] += 1
            hits[kind]["(any)"] += bool(fixes or found or text != turn["text"].strip())
    rows = [(g["name"], g["label"], [k for k in hits if k in g["reads"]]) for g in GATES
            if not g["needs"] and {"user", "assistant"} & set(g["reads"])]
    rows += [("whitespace", "(whitespace: no gate named)", list(hits)), ("any gate", "(any)", list(hits))]
    return [(name, {k: hits[k][label] / len(turns) if k in kinds else None for k in hits}) for name, label, kinds in rows]


def closing_rates(messages: list[dict]) -> dict:
    """The closing check's verdicts, and the closing turn's whole review, on labelled closing messages."""
    goodbyes = [m["text"] for m in messages if m["label"] == "goodbye"]
    others = [m["text"] for m in messages if m["label"] == "not_goodbye"]
    kept = [text for text in goodbyes if not review(text, "closing")[2]]
    cut = [text for text in goodbyes if review(text, "closing")[1]]
    return {"goodbyes": len(goodbyes), "recall": sum(map(is_closing, goodbyes)) / len(goodbyes),
            "others": len(others), "false accepts": sum(map(is_closing, others)) / len(others),
            "kept by review": len(kept) / len(goodbyes), "cleaned by review": len(cut) / len(goodbyes),
            "missed": [t for t in goodbyes if not is_closing(t)], "accepted": [t for t in others if is_closing(t)]}


def layout(text: str) -> list[str]:
    """What a reader sees of a message's shape: blank lines, list items, code fences, indented lines."""
    shape = []
    for line in text.strip().split("\n"):
        stripped = line.strip()
        shape.append("blank" if not stripped else "fence" if stripped.startswith("```") else
                     "indented" if line[:1] in " \t" else
                     "item" if stripped[:2] in ("- ", "* ", "> ") or stripped.split(" ")[0].rstrip(".)").isdigit() else
                     "table" if stripped.startswith("|") else "text")
    return shape


def kept_layout(messages: list[tuple[str, str]]) -> dict:
    """Of messages given as (text, kind): how many no gate cut, and how many of those came back as written."""
    untouched = same = touched = lines_kept = 0
    for raw, kind in messages:
        text, fixes, found = review(raw, kind)
        if fixes:
            touched += 1
            lines_kept += all(line in raw.split("\n") for line in text.split("\n") if line.strip())
        else:
            untouched += 1
            same += text == raw.strip() and layout(text) == layout(raw)
    return {"messages": len(messages), "no gate cut": untouched, "as written": same,
            "a gate cut": touched, "other lines as written": lines_kept}


def percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.2f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--misses", action="store_true", help="print each goodbye the check misses and each non-goodbye it accepts")
    args = parser.parse_args()
    human, ours = load("human_turns.jsonl"), load("model_style.jsonl")
    ordinary = [t for t in human if t["label"] == "ordinary"]

    print(f"Ordinary human turns ({len(ordinary)}): share each gate cleans or rejects\n")
    print("| gate | as a user turn | as an assistant reply |\n| --- | --- | --- |")
    for name, shares in gate_rates(ordinary):
        print(f"| `{name}` | {percent(shares['user'])} | {percent(shares['assistant'])} |")

    print("\nThe closing check\n")
    print("| messages | goodbyes | recall | kept by the closing turn's review | cleaned | not goodbyes | false accepts |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    checked = {"people's (chitchat-dataset)": [t for t in human if t["place"] == "closing"],
               "ours, in capable models' style": [m for m in ours if m["place"] == "closing"]}
    for name, messages in checked.items():
        r = closing_rates(messages)
        print(f"| {name} | {r['goodbyes']} | {r['recall']:.3f} | {r['kept by review']:.3f} | {r['cleaned by review']:.3f} "
              f"| {r['others']} | {r['false accepts']:.3f} |")
        if args.misses:
            for label, texts in (("missed", r["missed"]), ("accepted", r["accepted"])):
                for text in texts:
                    print(f"    {label}: {text!r}", file=sys.stderr)

    goodbyes = [t["text"] for t in human if t["label"] == "goodbye"]
    read = collections.Counter()
    for text in goodbyes:
        _, fixes, found = review(text, "farewell")
        read.update({*fixes, *found})
    print(f"\nPeople's goodbyes read as the assistant's last word (`farewell`, {len(goodbyes)}): "
          + (", ".join(f"{label} {percent(n / len(goodbyes))}" for label, n in read.most_common()) or "no gate acts"))

    print("\nWhitespace as written\n")
    print("| messages | count | no gate cut | of them returned as written | a gate cut | of them, every other line as written |")
    print("| --- | --- | --- | --- | --- | --- |")
    formatted = [(m["text"], m["place"]) for m in ours if m["label"] == "formatted"]
    lined = [(t["text"], kind) for t in ordinary if "\n" in t["text"] for kind in ("user", "assistant")]
    for name, messages in (("ours, with paragraphs, lists, tables or code", formatted),
                           ("human turns of several lines (as user and as assistant)", lined)):
        r = kept_layout(messages)
        print(f"| {name} | {r['messages']} | {r['no gate cut']} | {r['as written']} | {r['a gate cut']} "
              f"| {r['other lines as written']} |")


if __name__ == "__main__":
    main()
