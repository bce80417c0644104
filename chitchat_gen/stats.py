"""Dataset statistics: the `stats` command's figures and table, and the card's running totals.

    python -m chitchat_gen stats output/public/examples/chit_chat            # a table
    python -m chitchat_gen stats final_data.jsonl --task-paths task.yaml --json

Reads a `final_data.jsonl` (ours or DiGiT's) line by line. The figures:
turns histogram; closing exchanges and how many pass the closing check; what each quality gate
finds in the scenarios and messages (gates.GATES); pattern picks vs the task's weights (chi-square);
exact and near-duplicate scenarios (normalised text, word 3-gram Jaccard >= 0.5);
distinct-1/2 and mean length (words) of user and of assistant messages; persona coverage.
Memory stays flat in N: near-duplicates and distinct-n come from a seeded sample of SAMPLE
conversations, exact duplicates from a 64-bit hash of each scenario.

The card's figures are running totals in `.figures.json`, saved with a mark of final_data.jsonl
(store.mark) and a key naming the code and settings that counted them: a run's close counts only
the lines after the mark; a file the mark no longer describes, or another key, is counted afresh.

    >>> tally = new_tally(); add_message(tally, "a b a b"); round(distinct(tally, 2), 3)
    0.667
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

from . import dedupe, gates, phrases
from . import text as text_module
from .dedupe import pinned
from .gates import DEFAULTS, GATES, NAME_OF, is_closing, review, settings_for
from .prompts import JUDGED
from .record import messages, read_lines, turns
from .store import FINAL, grown_from, mark, rewrite
from .text import jaccard, normalise, shingles, words

FIGURES = ".figures.json"
SAMPLE = 10_000  # conversations whose scenarios and messages give the near-duplicate and distinct-n figures
NEAR_DUPLICATE = 0.5  # word 3-gram Jaccard at or above which two scenarios count as near-duplicates
# The Hub's size_categories buckets, by their upper bound; runs.jsonl and rejected.jsonl are in no config.


def new_tally() -> dict:
    """Running figures of one speaker's messages: counts, and the distinct 1- and 2-grams seen."""
    return {"messages": 0, "words": 0, "bigrams": 0, "distinct_1": set(), "distinct_2": set()}


def add_message(tally: dict, text: str) -> None:
    tokens = words(text)
    tally["messages"] += 1
    tally["words"] += len(tokens)
    tally["bigrams"] += max(0, len(tokens) - 1)
    tally["distinct_1"].update(tokens)
    tally["distinct_2"].update(zip(tokens, tokens[1:]))


def distinct(tally: dict, n: int) -> float:
    """Distinct n-grams / all n-grams (distinct-n), 0.0 when there are none."""
    total = tally["words"] if n == 1 else tally["bigrams"]
    return len(tally[f"distinct_{n}"]) / total if total else 0.0


def near_duplicates(texts: list[str], threshold: float = NEAR_DUPLICATE, scan: int = 200) -> int:
    """How many texts repeat an earlier text exactly (normalised) or with 3-gram Jaccard >= threshold.

    Each text is compared with the earlier texts that share one of its rarer half of 3-grams:
    Jaccard >= 0.5 means at least half of a text's 3-grams are shared, so one of that half is.
    Only the last `scan` texts of each 3-gram are looked at, which keeps big datasets fast.
    """
    sets = [shingles(t) for t in texts]
    frequency = Counter(g for grams in sets for g in grams)
    index, exact, count = defaultdict(list), set(), 0
    for i, grams in enumerate(sets):
        key = frozenset(grams)
        rarer = sorted(grams, key=frequency.__getitem__)[:len(grams) // 2 + 1]
        candidates = {j for g in rarer for j in index[g][-scan:]}
        if key in exact or any(jaccard(grams, sets[j]) >= threshold for j in candidates):
            count += 1
        exact.add(key)
        for g in grams:
            index[g].append(i)
    return count


def chi_square(observed: dict, weights: dict) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of picks against the weights' shares.

    >>> chi_square({"a": 90, "b": 10}, {"a": 1, "b": 1})[:2]
    (64.0, 1)
    """
    weights = {k: w for k, w in weights.items() if w > 0}
    total, weight_sum = sum(observed.get(k, 0) for k in weights), sum(weights.values())
    if not total or len(weights) < 2:
        return 0.0, 0, 1.0
    stat = sum((observed.get(k, 0) - total * w / weight_sum) ** 2 / (total * w / weight_sum) for k, w in weights.items())
    return stat, len(weights) - 1, chi_square_sf(stat, len(weights) - 1)


def chi_square_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square with whole df: the closed forms of the upper incomplete gamma.

    >>> round(chi_square_sf(7.815, 3), 3)
    0.05
    """
    h = x / 2
    if df % 2 == 0:
        term = total = 1.0
        for i in range(1, df // 2):
            term *= h / i
            total += term
        return math.exp(-h) * total
    term, total = math.sqrt(h) / (math.sqrt(math.pi) / 2), 0.0
    for i in range(1, (df + 1) // 2):
        total += term
        term *= h / (i + 0.5)
    return min(1.0, math.erfc(math.sqrt(h)) + math.exp(-h) * total)


def gate_finds(record: dict, given: dict) -> list[str]:
    """The names of the gates that find something in a conversation's scenario and messages, one
    name per message it finds something in.

    Each message is read as the stages read it: the last user message of a closing exchange as
    a closing message and the reply to it as a farewell, an assistant reply against the user
    message it answers. The gates that
    need what a dataset does not keep (the run's earlier scenarios, the user's instructions) do
    not run: the duplicate figures count scenario copies their own way.
    """
    steps, found = record.get("steps") or [], []
    said = messages(record)
    closing = has_closing_exchange(steps)
    for i, message in enumerate(said):
        kind = message["role"] if not closing or i < len(said) - 2 else "closing" if message["role"] == "user" else "farewell"
        _, fixes, problems = review(message["content"], kind, given, previous=said[i - 1]["content"] if i else "")
        found += sorted({NAME_OF[label] for label in fixes + problems})
    for step in steps:
        if step.get("role") == "scenario" and isinstance(step.get("content"), str):
            _, fixes, problems = review(step["content"], "scenario", given)
            found += sorted({NAME_OF[label] for label in fixes + problems})
    return found


def has_closing_exchange(steps: list) -> bool:
    """The last pattern picked ended the conversation, and a user message and its answer follow it."""
    flows = [i for i, s in enumerate(steps) if s.get("role") == "flow_controller"]
    return bool(flows) and bool(steps[flows[-1]].get("terminate")) and \
        [s.get("role") for s in steps[flows[-1] + 1:]] == ["user", "assistant"]


def new_totals() -> dict:
    """The figures of a dataset that a record adds to (`add_record`) and that stay small whatever N is."""
    return {"conversations": 0, "turns": Counter(), "closing_exchanges": 0, "passes_closing_check": 0,
            "gates": Counter(), "patterns": Counter(), "personas": Counter(), "judged": 0,
            "judge_sums": Counter(), "judge_overall": Counter()}


def add_record(totals: dict, record: dict, given: dict) -> None:
    """Add one conversation to `totals`, the quality gates read with the settings `given`.

    >>> totals = new_totals(); add_record(totals, {"steps": [{"role": "user", "content": "Bye!"}]}, DEFAULTS)
    >>> totals["conversations"], totals["passes_closing_check"], dict(totals["turns"])
    (1, 1, {0: 1})
    """
    steps = record.get("steps") or []
    users = [m["content"] for m in messages(record) if m["role"] == "user"]
    totals["conversations"] += 1
    totals["passes_closing_check"] += bool(users) and is_closing(users[-1], given)
    totals["gates"].update(gate_finds(record, given))
    scores = record.get("scores")
    if isinstance(scores, dict) and all(isinstance(scores.get(k), int) for k in JUDGED):
        totals["judged"] += 1
        totals["judge_sums"].update({k: scores[k] for k in JUDGED})
        totals["judge_overall"][round(sum(scores[k] for k in JUDGED) / len(JUDGED))] += 1
    totals["turns"][turns(steps)] += 1
    totals["closing_exchanges"] += has_closing_exchange(steps)
    for s in steps:
        if s.get("role") == "flow_controller":
            totals["patterns"][s.get("content")] += 1
        elif s.get("role") == "persona":
            totals["personas"][s.get("persona_role") or s.get("content")] += 1


def dataset_stats(path: Path, task: dict | None = None, text_figures: bool = True) -> dict:
    """Figures of a final_data.jsonl; `task` (task.load_task) adds weights and persona totals.

    Memory stays flat in N. The figures the dataset card keeps beside the data (`saved_totals`)
    are taken from there when they still describe the file, and counted for the lines after.
    `text_figures=False` leaves out the scenario and message figures. Of those, exact duplicates,
    seed copies and message lengths count every conversation (duplicates by a 64-bit hash of the
    normalised scenario: ~80 bytes a distinct scenario); near-duplicates and distinct-n are
    computed on a uniform sample of SAMPLE conversations (seeded: the same file, the same figures;
    all of them when N is at most SAMPLE), and `sample` says how many.
    """
    given = settings_for(task) if task else DEFAULTS
    totals, counted_to = saved_totals(path.parent, totals_key(given), path) if path.name == FINAL else (new_totals(), 0)
    text = new_text_figures(task, given) if text_figures else None
    for _, start, _, record, _ in read_lines(path):
        if not isinstance(record, dict):
            continue  # a blank line, or a torn last line from a killed run
        if start >= counted_to:
            add_record(totals, record, given)
        if text:
            add_text(text, record)
    result = figures(totals, task)
    if text:
        result.update(text_results(text))
    return result


def figures(totals: dict, task: dict | None) -> dict:
    """The figures of `totals`, with the task's weights (chi-square) and persona count when given."""
    result = {
        "conversations": totals["conversations"],
        "turns": dict(sorted(totals["turns"].items())),
        "closing_exchanges": totals["closing_exchanges"],
        "passes_closing_check": totals["passes_closing_check"],
        "gates": {g["name"]: totals["gates"][g["name"]] for g in GATES if not g["needs"]},
        "patterns": dict(totals["patterns"].most_common()),
        "distinct_personas": len(totals["personas"]),
    }
    if judged := totals["judged"]:
        result["judge"] = {"judged": judged, "mean": {k: round(totals["judge_sums"][k] / judged, 2) for k in JUDGED},
                           "overall": dict(sorted(totals["judge_overall"].items()))}
    if task:
        result["personas_available"] = len(task["personas"])
        flow = next((s for s in task["iteration_stages"] if s["name"] == "lm/flow_controller"), None)
        if flow:
            # Termination is steered by the turn bounds, not drawn freely: compare the other moves only.
            weights = {p["name"]: p["weight"] for p in flow["patterns"] if p["name"] not in flow["termination_patterns"]}
            stat, df, p = chi_square(totals["patterns"], weights)
            result["weights"] = weights
            result["chi_square"] = {"statistic": round(stat, 2), "df": df, "p_value": round(p, 4),
                                    "differs": p < 0.01}
    return result


# --- scenario and message figures: every conversation, or a bounded sample -------------------

def new_text_figures(task: dict | None, given: dict) -> dict:
    return {"scenarios": 0, "exact": set(), "seeds": pinned(task["seed_scenarios"]) if task else None,
            "copying": 0, "share": given["copy_share"], "seen": 0, "sample": [], "draw": random.Random(SAMPLE),
            "messages": Counter(), "words": Counter()}


def add_text(text: dict, record: dict) -> None:
    """Add one conversation's scenarios and messages: counts now, and a reservoir sample for the rest."""
    steps = [s for s in record.get("steps") or () if isinstance(s, dict)]
    scenarios = [s.get("content") or "" for s in steps if s.get("role") == "scenario"]
    for scenario in scenarios:
        text["scenarios"] += 1
        text["exact"].add(hashlib.blake2b(normalise(scenario).encode("utf-8"), digest_size=8).digest())
        if text["seeds"] is not None:
            text["copying"] += text["seeds"].copy_of(scenario, text["share"]) is not None
    said = [(s["role"], s.get("content") or "") for s in steps if s.get("role") in ("user", "assistant")]
    for role, content in said:
        text["messages"][role] += 1
        text["words"][role] += len(words(content))
    # Reservoir sampling (Algorithm R), seeded: the same file gives the same sample.
    text["seen"] += 1
    slot = text["seen"] - 1 if text["seen"] <= SAMPLE else text["draw"].randrange(text["seen"])
    if slot < SAMPLE:
        kept = (scenarios, said)
        if slot == len(text["sample"]):
            text["sample"].append(kept)
        else:
            text["sample"][slot] = kept


def text_results(text: dict) -> dict:
    tallies = {"user": new_tally(), "assistant": new_tally()}
    scenarios = []
    for kept_scenarios, said in text["sample"]:
        scenarios += kept_scenarios
        for role, content in said:
            add_message(tallies[role], content)
    result = {"scenarios": text["scenarios"], "duplicate_scenarios": text["scenarios"] - len(text["exact"]),
              "near_duplicate_scenarios": near_duplicates(scenarios), "sample": len(text["sample"])}
    if text["seeds"] is not None:
        result["scenarios_copying_a_seed"] = text["copying"]
    for role, tally in tallies.items():
        count = text["messages"][role]
        result[f"{role}_messages"] = count
        result[f"{role}_mean_words"] = round(text["words"][role] / count, 1) if count else 0.0
        result[f"{role}_distinct_1"] = round(distinct(tally, 1), 3)
        result[f"{role}_distinct_2"] = round(distinct(tally, 2), 3)
    return result


# --- the card's figures, kept beside the data -----------------------------------------------
# .figures.json: the totals of final_data.jsonl up to a `store.mark` of it, and a key naming the
# code and settings that counted them. A run's close adds only the lines after the mark.

def totals_key(given: dict) -> str:
    """Names what counted the totals: the gates' code and phrases, this module's rules, the task's settings."""
    digest = hashlib.blake2b(json.dumps(given, sort_keys=True, default=str).encode("utf-8"), digest_size=16)
    for module in (gates, phrases, dedupe, text_module, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def saved_totals(folder: Path, key: str, path: Path | None = None) -> tuple[dict, int]:
    """(totals, the byte of final_data.jsonl they count up to) from .figures.json, if they still
    describe the file and were counted as `key` (totals_key) names; else (new_totals(), 0): a full recount.
    """
    path = path or folder / FINAL
    try:
        saved = json.loads((folder / FIGURES).read_text(encoding="utf-8"))
        if saved["key"] == key and grown_from(path, saved["mark"]):
            totals = new_totals()
            for name, value in saved["totals"].items():
                totals[name] = Counter({_key(name, k): n for k, n in value.items()}) if isinstance(value, dict) else value
            return totals, saved["mark"]["size"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # none, unreadable or of another shape: counted again
    return new_totals(), 0


def _key(name: str, key: str):
    # JSON keys are strings: the turns and overall scores are numbers again.
    return int(key) if name in ("turns", "judge_overall") else key


def card_figures(folder: Path, task: dict) -> dict:
    """The card's figures of the folder: the saved totals plus the lines after them, saved again."""
    path, given = folder / FINAL, settings_for(task)
    key = totals_key(given)
    totals, counted_to = saved_totals(folder, key)
    torn = False
    for _, _, line, record, _ in read_lines(path, counted_to):
        if not line.endswith("\n"):
            torn = True  # not counted, and no mark can stop before it: the next close counts it
        elif isinstance(record, dict):
            add_record(totals, record, given)
    if not torn:
        saved = mark(path)
        try:
            rewrite(folder / FIGURES, [json.dumps({"key": key, "mark": saved, "totals": totals}) + "\n"])
        except OSError:
            (folder / FIGURES).unlink(missing_ok=True)  # no room: the next close counts them all
    return figures(totals, task)


def render_table(stats: dict) -> str:
    """The stats as aligned plain text."""
    rows = [("conversations", stats["conversations"]),
            ("turns histogram", ", ".join(f"{k}: {v}" for k, v in stats["turns"].items()) or "-"),
            ("closing exchanges", f"{stats['closing_exchanges']} of {stats['conversations']} "
                                  f"(the last user message passes the closing check in {stats['passes_closing_check']})"),
            ("distinct personas", stats["distinct_personas"]
             if "personas_available" not in stats else f"{stats['distinct_personas']} of {stats['personas_available']}")]
    sampled = f" in a sample of {stats['sample']:,} conversations" if stats.get("sample", stats["conversations"]) < stats["conversations"] else ""
    if "scenarios" in stats:
        rows.append(("duplicate scenarios", f"{stats['duplicate_scenarios']} exact, "
                                            f"{stats['near_duplicate_scenarios']} near{sampled} (of {stats['scenarios']})"))
    if "scenarios_copying_a_seed" in stats:
        rows.append(("scenarios copying a seed", stats["scenarios_copying_a_seed"]))
    if "judge" in stats:
        judge = stats["judge"]
        rows.append(("judge scores", f"{judge['judged']} judged, overall " + ", ".join(f"{k}: {v}" for k, v in judge["overall"].items())
                     + "; means " + ", ".join(f"{k} {v}" for k, v in judge["mean"].items())))
    for role in ("user", "assistant") if "user_messages" in stats else ():
        rows.append((f"{role} messages", f"{stats[f'{role}_messages']}, mean {stats[f'{role}_mean_words']} words, "
                                         f"distinct-1 {stats[f'{role}_distinct_1']}, distinct-2 {stats[f'{role}_distinct_2']}{sampled}"))
    lines = [f"{name:<26}{value}" for name, value in rows]
    lines += ["", f"{'quality gate':<32}{'messages':>10}   finds (in scenarios and messages)"]
    labels = {g["name"]: (g["label"], "cleans" if g["cleans"] else "problem") for g in GATES}
    lines += [f"{name:<32}{n:>10}   {labels[name][0]} ({labels[name][1]})" for name, n in stats["gates"].items()]
    picks = stats["patterns"]
    weights = stats.get("weights", {})
    if picks:
        lines.append("")
        lines.append(f"{'pattern':<32}{'picks':>7}{'share':>8}" + (f"{'weight share':>14}" if weights else ""))
        moves = sum(picks.get(k, 0) for k in weights) if weights else sum(picks.values())
        for name, count in picks.items():
            share = f"{count / moves:8.1%}" if name in weights or not weights else f"{'-':>8}"
            wanted = f"{weights[name] / sum(weights.values()):14.1%}" if name in weights else (f"{'(bounds)':>14}" if weights else "")
            lines.append(f"{str(name):<32}{count:>7}{share}{wanted}")
    if "chi_square" in stats:
        chi = stats["chi_square"]
        verdict = "DIFFERS from the weights" if chi["differs"] else "consistent with the weights"
        lines.append(f"chi-square {chi['statistic']} (df {chi['df']}), p = {chi['p_value']}: {verdict}")
    return "\n".join(lines)
