r"""Quality gates: the mistakes models make in generated text, found by name, cleaned where safe.

A training set inherits every mistake of the model that wrote it; a small model makes more of
them, a large one fewer. Every gate is one row of `GATES`: its name (what a task's `quality:`
section turns off), the messages it reads, its check, whether it cleans or names a problem, and
the label that drop reasons, `metadata.cleaned`, `stats`, the dataset card and the viewer show.
The stages ask one question of every reply, `review`: what is wrong with this message? They get
back the text cleaned (what can go without changing the meaning went: labels, prompt lines the
model copied, stage directions, a repeated sentence, the other speaker's next line), what went,
and the problems left (the stage retries, then drops the conversation with the problem's label).
A cleaning gate that would leave nothing of the message names a problem instead. `stats` runs
the same table over a dataset, so the figures mean what the gates mean.

    >>> review("Situation: a rainy day.\nI love rain! (laughs) I love rain!", "user")
    ('I love rain!', ['leaked label', 'stage direction', 'repeated sentence'], [])
    >>> review("Sure, I'd be happy to help you plan [insert city here].", "user")[2]
    ['placeholder', "assistant's voice"]
    >>> is_closing("Thanks a lot, talk soon!")
    True

The phrase lists (phrases.py) are English; a task adds its own under `quality.phrases`.
"""

from __future__ import annotations

import functools
import re
from functools import lru_cache

from . import task as task_file
from .dedupe import COPY_SHARE, CopyIndex, pinned
from .errors import ConfigError
from .phrases import MENTIONED, PHRASES, THANKS
from .text import jaccard, normalise, shingles, words

# --- thresholds (a task sets them under `quality:`) ------------------------------------------
THRESHOLDS = {
    "copy_share": COPY_SHARE,  # dedupe.CopyIndex
    "echo_share": 0.6,  # share of the user's 3-grams that an assistant reply repeats to count as echoing it
    "parrot_words": 5,  # words in a row copied from the instruction that make a message a parroted instruction
    # A bound on a closing that runs away, not its usual length: most are a sentence or two, but
    # people often answer first and take leave after it in the same message (docs/quality.md,
    # section 8). The closing turn is capped at 64 tokens (stages.CLOSING_MAX_TOKENS) anyway.
    "closing_sentences": 16,
    "closing_words": 200,
}


def language_note(task: dict) -> str | None:
    """The note a run prints when the task's language is not English, whose phrase lists these are.

    >>> language_note({"path": "task.yaml", "language": "de"})[:56]
    "task.yaml: language: de: the quality gates' phrase lists"
    >>> language_note({"path": "task.yaml", "language": "en-GB"}) is None
    True
    """
    if task["language"].split("-")[0].lower() == "en":
        return None
    return (f"{task['path']}: language: {task['language']}: the quality gates' phrase lists are English; add phrases in "
            "your language under quality.phrases, or turn gates off under quality.gates (docs/quality.md)")


def settings(gates: dict | None = None, phrases: dict | None = None, **thresholds) -> dict:
    """The gates' settings: which gates are on, each phrase list with a task's additions, thresholds.

    >>> s = settings(gates={"stage_direction": False}, phrases={"closing_cues": ["a presto"]}, echo_share=0.8)
    >>> s["gates"]["stage_direction"], s["phrases"]["closing_cues"][-1], s["echo_share"]
    (False, 'a presto', 0.8)
    """
    extra = phrases or {}
    return {"gates": {gate["name"]: (gates or {}).get(gate["name"], gate["on"]) for gate in GATES},
            "phrases": {name: (*entries, *extra.get(name, ())) for name, entries in PHRASES.items()},
            **THRESHOLDS, **thresholds}


@lru_cache(maxsize=64)
def _compiled(form: str, ours: tuple, theirs: tuple, flags: int) -> re.Pattern:
    return re.compile(form.replace("LIST", "|".join((*ours, *map(re.escape, theirs)))), flags)


def pattern(name: str, form: str, given: dict, flags: int = re.I) -> re.Pattern:
    """Phrase list `name` (ours as regexes, a task's as plain text) compiled inside `form` at LIST."""
    entries, ours = given["phrases"][name], PHRASES[name]
    return _compiled(form, ours, entries[len(ours):], flags)


# --- the checks: a cleaning check returns the text without what it found, a problem check a bool

NEXT_SPEAKER = re.compile(r"\n\s*\**(user|assistant|human|ai)\**\s*:", re.I)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
SENTENCE_GAP = re.compile(r"(?<=[.!?])[ \t]+")
# Small models write about a goodbye instead of saying it: 'a confident "Thanks"'.
QUOTED = re.compile(r'"[^"]*"|“[^”]*”')
# A short span in parentheses, or in single asterisks (not **bold**): an aside, maybe not part of the text.
ASIDE = re.compile(r"\(([^()\n]{1,120})\)|(?<![*\w])\*(?!\*)([^*\n]{1,120})(?<!\*)\*(?![*\w])")
CLEANING_PASSES = 3  # the cleaning gates run again while a pass changed the text, at most this often
DIRECTION_WORDS = 12  # an action longer than this is more likely an aside of the text itself


def next_speaker(text: str, about: dict) -> str:
    return NEXT_SPEAKER.split(text, maxsplit=1)[0].strip()


def speaker_label(text: str, about: dict) -> str:
    # subtle: the list matches in any case, a name after it only capitalised ("Auntie Jane:", not "Mum said:").
    label = pattern("speaker_labels", r"^\s*\**(?i:LIST)(?:\.?[ \t]+[A-Z][\w'-]*){0,2}\**\s*:\s*\**\s*",
                    about["given"], flags=0)
    return label.sub("", text, count=1).strip()


def leaked_label(text: str, about: dict) -> str:
    leaked = pattern("leaked_labels", r"^\s*\**(?:LIST)\**\s*:", about["given"])
    lines = text.split("\n")
    return without(lines, {i for i, line in enumerate(lines) if leaked.match(line)})


def meta_note(text: str, about: dict) -> str:
    """Without notes about the chat: in parentheses, or a sentence such as "Here is a continuation ..."."""
    note = pattern("meta_notes", r"(?<!\w)(?:LIST)(?!\w)", about["given"])
    opener = pattern("meta_lines", r"^(?:LIST)", about["given"])
    kept = re.sub(r"\(([^()\n]{1,200})\)", lambda m: "" if note.search(m.group(1)) else m.group(0), text)
    lines = []
    for line in kept.split("\n"):
        parts = SENTENCE_GAP.split(line)
        said = [part for part in parts if not opener.match(part.strip())]
        lines.append(line if len(said) == len(parts) else " ".join(said))
    return tidy(text, "\n".join(lines))


def stage_direction(text: str, about: dict) -> str:
    """Without stage directions: an aside that starts with an action word, or a lone adverb at a
    sentence's edge ("(excitedly) Oh!"); "I saw it (twice!)" and "(see the menu)" stay."""
    actions = inflected(about["given"]["phrases"]["stage_directions"])

    def keep(match: re.Match) -> str:
        said = words(match.group(1) or match.group(2))
        before, after = text[:match.start()].rstrip(), text[match.end():].strip()
        at_edge = not before or before[-1] in ".!?:;)*" or not words(after)
        adverb = bool(said) and len(said) <= 2 and len(said[0]) >= 5 and said[0].endswith("ly")
        manner = len(said) >= 3 and said[0] == "with" and said[2] in actions  # "(with a smile)", "*with a wink*"
        return "" if said and len(said) <= DIRECTION_WORDS and (said[0] in actions or manner or adverb and at_edge) \
            else match.group(0)

    return tidy(text, ASIDE.sub(keep, text))


@lru_cache(maxsize=16)
def inflected(bases: tuple) -> frozenset:
    """Each word with its -s, -ed and -ing forms: "smile" -> smiles, smiled, smiling; "nod" -> nodding."""
    forms = set()
    for base in map(str.lower, bases):
        stem = base[:-1] if base.endswith("e") else base
        forms |= {base, base + "s", base + "es", base + "d", base + "ed", stem + "ing", stem + "ed",
                  base + base[-1] + "ing", base + base[-1] + "ed"}
    return frozenset(forms)


def tidy(text: str, cut: str) -> str:
    r"""`cut` (`text` with spans taken out of its lines, line for line) mended where something went:
    spaces closed up, a line left empty dropped (without()); the other lines as written.

    >>> tidy("Oh (laughs) yes.\n\n(nods)\n\n    code  here", "Oh  yes.\n\n\n\n    code  here")
    'Oh yes.\n\n    code  here'
    """
    lines, emptied = [], set()
    for i, (before, after) in enumerate(zip(text.split("\n"), cut.split("\n"))):
        if after != before:
            after = re.sub(r"\s+([,.!?;:])", r"\1", re.sub(r"[ \t]{2,}", " ", after)).strip(" \t,;")
            if not after:
                emptied.add(i)
        lines.append(after)
    return without(lines, emptied) if cut != text else text


def without(lines: list[str], cut: set[int]) -> str:
    r"""The lines but those in `cut`, joined: a line cut from between blank lines takes one with it,
    so a paragraph cut leaves one gap, and nothing else moves ("a gate that cuts a line cuts only that line").

    >>> without(["Hi.", "", "Situation: x", "", "Bye."], {2})
    'Hi.\n\nBye.'
    """
    if not cut:
        return "\n".join(lines)
    kept = []
    for i, line in enumerate(lines):
        if i in cut or (not line.strip() and i - 1 in cut and (not kept or not kept[-1].strip())):
            continue
        kept.append(line)
    return "\n".join(kept).strip()


def repeated_paragraph(text: str, about: dict) -> str:
    """Without a line that repeats an earlier one (the same words, or 80 % of its 3-grams); blank
    lines, code in ``` fences and indented lines are layout, never repeats."""
    lines, fenced, seen, cut = text.split("\n"), False, [], set()
    for i, line in enumerate(lines):
        fence = line.strip().startswith("```")
        fenced ^= fence
        if fence or fenced or line[:1] in " \t" or not words(line):
            continue
        if any(normalise(line) == normalise(earlier) or jaccard(shingles(line), shingles(earlier)) >= 0.8 for earlier in seen):
            cut.add(i)
        else:
            seen.append(line)
    return without(lines, cut)


def first_line(text: str, about: dict) -> str:
    return text.split("\n")[0]


def quotes(text: str, about: dict) -> str:
    return text[1:-1].strip() if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" else text


def repeated_sentence(text: str, about: dict) -> str:
    """Without a sentence said again (small models loop: "I'm so glad! I'm so glad! ..."); the gaps
    between the sentences kept stay as written, and ". . ." is no sentence."""
    pieces = SENTENCE_GAP.split(text)
    gaps = SENTENCE_GAP.findall(text)
    seen, kept = {normalise(pieces[0])}, [pieces[0]]
    for gap, piece in zip(gaps, pieces[1:]):
        said = normalise(piece)
        if said and said in seen:
            continue
        seen.add(said)
        kept.append(gap + piece)
    return "".join(kept)


def after_goodbye(text: str, about: dict) -> str:
    return cut_after_goodbye(text, about["given"])


def question_after_goodbye(text: str, about: dict) -> str:
    r"""The assistant's answer to a goodbye without its questions: nobody is left to answer them.

    >>> question_after_goodbye("You're welcome! Do you bake often?\n\nTake care.", {})
    "You're welcome!\n\nTake care."
    """
    spans = sentence_spans(text)
    asked = {i for i, (start, end) in enumerate(spans) if "?" in text[start:end]}
    first = next((i for i in range(len(spans)) if i not in asked), None)
    kept = [text[start:end] if i == first else text[spans[i - 1][1]:end] for i, (start, end) in enumerate(spans) if i not in asked]
    return "".join(kept) if asked else text


def placeholder(text: str, about: dict) -> bool:
    form = r"\[\s*(?:LIST)\b[^\]]*\]|<\s*(?:LIST)\b[^>]*>|\{\{[^}]*\}\}"
    return bool(pattern("placeholders", form, about["given"]).search(text))


def assistant_voice(text: str, about: dict) -> bool:
    return bool(pattern("assistant_voice", r"\b(?:LIST)\b", about["given"]).search(text))


LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+(\S+)", re.M)


def instruction_list(text: str, about: dict) -> bool:
    """A user message whose list items (two or more) all open with a verb of INSTRUCTION_VERBS."""
    verbs = {verb.lower() for verb in about["given"]["phrases"]["instruction_verbs"]}
    items = [words(item)[:1] for item in LIST_ITEM.findall(text)]
    return len(items) >= 2 and all(item and item[0] in verbs for item in items)


def user_voice(text: str, about: dict) -> bool:
    return bool(pattern("user_voice", r"(?:LIST)", about["given"]).search(text))


def echo(text: str, about: dict) -> bool:
    return echoes(text, about["previous"], about["given"]["echo_share"])


def echoes(reply: str, message: str, share: float = THRESHOLDS["echo_share"]) -> bool:
    """The reply repeats the message it answers: word for word (the whole reply, or how it
    opens), or most of its 3-grams (`share`, for a message of 6 words or more).

    >>> echoes("I love hiking in the rain. Me too!", "I love hiking in the rain."), echoes("Sure.", "Short one?")
    (True, False)
    """
    said, answer = normalise(message), normalise(reply)
    if said and (answer == said or len(said.split()) >= 3 and answer.startswith(said + " ")):
        return True
    grams = shingles(message)
    return len(said.split()) >= 6 and len(grams & shingles(reply)) / len(grams) >= share


def parrot(text: str, about: dict) -> bool:
    return parrots(text, about["instruction"], about["given"]["parrot_words"])


def parrots(text: str, instruction: str, run: int = THRESHOLDS["parrot_words"]) -> bool:
    """The message copies `run` words in a row from the instruction it was given.

    >>> parrots("Wrap up in a sentence or two: bye!", "This is your last message: wrap up in a sentence or two.")
    True
    """
    return bool(shingles(text, run) & shingles(instruction, run)) and len(words(text)) >= run


def not_a_goodbye(text: str, about: dict) -> bool:
    return not is_closing(text, about["given"])


def is_closing(text: str, given: dict | None = None) -> bool:
    """The message is a closing: it takes leave, thanks, or wishes well, and asks nothing new.

    One of its last two sentences says a closing cue (CLOSING_CUES, plus a task's own): people
    and models end on their goodbye, or add a word after it ("Thanks! I'll try it tomorrow.").
    It asks nothing from its goodbye on, and before it only when it takes leave or wishes well
    (a thanks after a question thanks in advance). And it is short (`closing_sentences`,
    `closing_words`). A cue anywhere is not enough: small models put "thank" inside rambling text.

    >>> is_closing("Great, thanks! I'll try that tomorrow."), is_closing("Well, I gotta go! Nice chatting with you!")
    (True, True)
    >>> is_closing("Thanks! What else can I plant in spring?"), is_closing("I have a great day so far, you're not going anywhere")
    (False, False)
    """
    given = given or DEFAULTS
    found = [sentence for sentence in sentences(QUOTED.sub(" ", text)) if words(sentence)]  # a thanks in quotes is talked about
    if not found or len(found) > given["closing_sentences"] or len(words(text)) > given["closing_words"]:
        return False
    said = [said_cues(sentence, given) for sentence in found[-2:]]
    if not any(said):
        return False
    goodbye = len(found) - len(said) + next(i for i, kinds in enumerate(said) if kinds)  # the first sentence with a cue
    if any("?" in sentence for sentence in found[goodbye:]):
        return False
    return not any("?" in sentence for sentence in found[:goodbye]) or "leave" in set().union(*said)


def said_cues(sentence: str, given: dict | None = None) -> set[str]:
    """The kinds of closing cue a sentence says, "thanks" or "leave" (taking leave or wishing well):
    not in quotes, not after "says" or "just say", not after a negation in the same clause.

    >>> sorted(said_cues("Thanks, see you!")), said_cues('Just say goodbye, or a quick "thanks".'), said_cues("No, no thanks.")
    (['leave', 'thanks'], set(), set())
    """
    given = given or DEFAULTS
    phrases, kinds = given["phrases"], set()
    cue = pattern("closing_cues", r"(?<![\w'])(?:LIST)(?![\w'])", given)
    for clause in CLAUSE.split(QUOTED.sub(" ", sentence.replace("\u2019", "'"))):
        said = normalise(clause)
        for match in cue.finditer(said):
            before = said[:match.start()].split()
            if not (set(before[-4:]) & set(phrases["negations"]) or mentioned(before[-2:], phrases["mentioned"])):
                kinds.add("thanks" if THANKING.fullmatch(match.group(0)) else "leave")
    return kinds


CLAUSE = re.compile(r"[,;:()\[\]\u2013\u2014]|\s[-~]+\s|\.\.+")
THANKING = re.compile("|".join(THANKS))


def has_cue(sentence: str, given: dict | None = None) -> bool:
    """A thanks or goodbye said, not talked about (said_cues).

    >>> has_cue("Thanks, see you!"), has_cue('Just say goodbye, or a quick "thanks".')
    (True, False)
    """
    return bool(said_cues(sentence, given))


def cut_after_goodbye(text: str, given: dict | None = None) -> str:
    """A closing message that ran on past its goodbye, cut after it; any other text as it is.

    On the closing turn what follows the goodbye is the model writing on (like the other
    speaker's next line), so it can go; a message that is already a closing is kept whole.
    The text before the cut keeps its line breaks.

    >>> cut_after_goodbye("Thanks, that was fun. Bye! PS: what is your favourite colour?")
    'Thanks, that was fun. Bye!'
    """
    given = given or DEFAULTS
    if is_closing(text, given):
        return text
    spans = sentence_spans(text)
    last = max((i for i, (start, end) in enumerate(spans) if has_cue(text[start:end], given)), default=None)
    return text if last is None else text[:spans[last][1]]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Where each sentence of `text` starts and ends (a sentence ends at . ! ? and a space, or a line break)."""
    spans, start = [], 0
    for gap in [*SENTENCE_END.finditer(text), None]:
        end = gap.start() if gap else len(text)
        if text[start:end].strip():
            spans.append((start, end))
        start = gap.end() if gap else end
    return spans


def sentences(text: str) -> list[str]:
    return [text[start:end].strip() for start, end in sentence_spans(text)]


def mentioned(before: list[str], words_of_saying=MENTIONED) -> bool:
    """The two words before a cue make it talk about a goodbye: "says thanks", "just say goodbye"
    (but "I say thanks", "wanted to say thank you" say it)."""
    return bool(before) and (before[-1] in words_of_saying or before[-1] == "say" and before[:1] not in (["i"], ["to"], ["we"]))


def not_a_scenario(text: str, about: dict) -> bool:
    """Speaks as someone (I, you, we), greets or answers, asks, or announces something to follow."""
    said = words(text)
    openers = {opener.lower() for opener in about["given"]["phrases"]["not_a_scenario"]}
    return bool(said) and (said[0] in openers or "?" in text or text.rstrip().endswith(":"))


def copy(text: str, about: dict) -> bool:
    return about["earlier"].copy_of(text, about["given"]["copy_share"]) is not None


def near_duplicate(text: str, about: dict) -> bool:
    threshold, grams = about["near_duplicate"], shingles(text)
    return threshold is not None and any(jaccard(grams, other) >= threshold
                                         for other in map(shingles, about["earlier"].texts(pinned=True)))



# --- the gate table ----------------------------------------------------------------------------
# The messages a gate reads: a scenario, an LM-written hint, a user message, the user's closing
# message, an assistant reply, the assistant's reply to the closing (the conversation's last word).
KINDS = ("scenario", "hint", "user", "closing", "assistant", "farewell")
SAID, USER, ASSISTANT = ("user", "closing", "assistant", "farewell"), ("user", "closing"), ("assistant", "farewell")


def gate(name: str, reads: tuple, check, label: str, cleans: bool = False, on: bool = True, needs: str = "") -> dict:
    """One gate. `cleans`: `check` returns the text without what it found (a problem when nothing
    would be left), else it returns whether the text has the problem. `needs`: what the check
    reads besides the message, which a dataset does not keep ("earlier": the run's earlier
    scenarios; "instruction": what the user was told), so `stats` cannot run it."""
    return {"name": name, "reads": reads, "check": check, "label": label, "cleans": cleans, "on": on, "needs": needs}


# In the order they run: cleaning first (each on what the one before left), then the problems.
GATES = [
    gate("next_speaker", KINDS, next_speaker, "the other speaker's next line", cleans=True),
    gate("speaker_label", KINDS, speaker_label, "speaker label", cleans=True),
    gate("leaked_label", KINDS, leaked_label, "leaked label", cleans=True),
    gate("meta_note", KINDS, meta_note, "note about the chat", cleans=True),
    gate("stage_direction", SAID, stage_direction, "stage direction", cleans=True),
    gate("repeated_paragraph", KINDS, repeated_paragraph, "repeated paragraph", cleans=True),
    gate("first_line", ("scenario",), first_line, "lines after the first", cleans=True),
    gate("quotes", KINDS, quotes, "quotes around the message", cleans=True),
    gate("repeated_sentence", KINDS, repeated_sentence, "repeated sentence", cleans=True),
    gate("after_goodbye", ("closing",), after_goodbye, "text after the goodbye", cleans=True),
    gate("question_after_goodbye", ("farewell",), question_after_goodbye, "question after the goodbye", cleans=True),
    gate("placeholder", KINDS, placeholder, "placeholder"),
    gate("assistant_voice", USER, assistant_voice, "assistant's voice"),
    gate("instruction_list", USER, instruction_list, "instruction restated as a list"),
    gate("user_voice", ASSISTANT, user_voice, "the user's voice"),
    gate("echo", ASSISTANT, echo, "echo of the user"),
    gate("parrot", USER, parrot, "instruction copied", needs="instruction"),
    gate("not_a_goodbye", ("closing",), not_a_goodbye, "fails the closing check"),
    gate("not_a_scenario", ("scenario",), not_a_scenario, "not a scenario"),
    gate("copy", ("scenario",), copy, "copies a seed or an earlier scenario", needs="earlier"),
    gate("near_duplicate", ("scenario",), near_duplicate, "near-duplicate of an earlier scenario", needs="earlier"),
]
GATE_NAMES = [g["name"] for g in GATES]
NAME_OF = {g["label"]: g["name"] for g in GATES}  # labels are unique (a test checks)
DEFAULTS = settings()


def review(text: str, kind: str, given: dict | None = None, previous: str = "", instruction: str | None = None,
           earlier=None, seeds=(), near_duplicate: float | None = None) -> tuple[str, list[str], list[str]]:
    r"""What is wrong with one message: (the text cleaned, labels of what went, labels of the problems left).

    `kind` is one of KINDS; `given` the task's settings (`task["quality"]`, else the defaults);
    `previous` the message it answers (echoes); `instruction` what the user was told (parroting)
    `earlier` the earlier scenarios (a CopyIndex, a list, or anything with texts(); None: the
    gates that need them do not run) and `seeds` the task's, which count as earlier too;
    `near_duplicate` lm/scenario's threshold.

    >>> review('User: "Nice! What next?"\nAssistant: Well...', "user")
    ('Nice! What next?', ["the other speaker's next line", 'speaker label', 'quotes around the message'], [])
    >>> review("*smiles*", "assistant")
    ('*smiles*', [], ['stage direction'])
    >>> review("Your message:\nMe: Thanks, bye!", "closing")[:2]  # two labels: cleaned until none is left
    ('Thanks, bye!', ['speaker label'])
    """
    if isinstance(earlier, CopyIndex):
        earlier.pin(seeds)  # a seed already pinned is skipped: the stage passes them on every call
    elif earlier is not None:
        earlier = pinned([*seeds, *(earlier.texts() if hasattr(earlier, "texts") else earlier)])
    given = given or DEFAULTS
    about = {"kind": kind, "given": given, "previous": previous, "instruction": instruction, "earlier": earlier,
             "near_duplicate": near_duplicate}
    text = text.strip()  # whitespace inside a message stays as written: paragraphs, lists, code
    rows = [row for row in GATES if kind in row["reads"] and given["gates"][row["name"]]
            and not (row["needs"] and about[row["needs"]] is None)]
    fixes, found = [], []
    for _ in range(CLEANING_PASSES):  # one cut can uncover another: "Your message:" above "Me: Thanks!"
        before = text
        for row in (row for row in rows if row["cleans"]):
            if (cleaned := row["check"](text, about)) == text:
                continue
            if words(cleaned):
                text, fixes = cleaned, fixes if row["label"] in fixes else [*fixes, row["label"]]
            elif row["label"] not in found:  # nothing of the message would be left: it is the problem
                found.append(row["label"])
        if text == before:
            break
    return text, fixes, found + [row["label"] for row in rows if not row["cleans"] and row["check"](text, about)]


# --- a task's settings ----------------------------------------------------------------------

QUALITY_FIELDS = [
    task_file.field("gates", "mapping", {}, "`name: false` turns a gate off (`true` on); names: " + ", ".join(GATE_NAMES)),
    task_file.field("phrases", "mapping", {}, "`list: [phrase, ...]` adds plain phrases to a phrase list of phrases.py; lists: "
          + ", ".join(PHRASES)),
    task_file.field("copy_share", "number", THRESHOLDS["copy_share"],
          "share of a seed's or an earlier scenario's word weight (rare words weigh more) that makes a scenario "
          "its copy, or the reverse (docs/quality.md)", above=0, high=1),
    task_file.field("echo_share", "number", THRESHOLDS["echo_share"],
          "share of the user's 3-grams an assistant reply repeats to be an echo of the user", above=0, high=1),
    task_file.field("parrot_words", "int", THRESHOLDS["parrot_words"],
          "words in a row copied from the instruction that make a user message a copied instruction", low=2),
    task_file.field("closing_sentences", "int", THRESHOLDS["closing_sentences"],
          "most sentences a closing message may have and pass the closing check", low=1),
    task_file.field("closing_words", "int", THRESHOLDS["closing_words"],
          "most words a closing message may have and pass the closing check", low=1),
]


def settings_for(task: dict) -> dict:
    """The task's `quality:` section checked and resolved as `settings`, with lm/user/guided's
    `closing_cues` among the phrases; a problem is a ConfigError naming the file and the key.

    >>> settings_for({"path": "task.yaml", "quality": {"echo_share": 0.8}, "iteration_stages": []})["echo_share"]
    0.8
    """
    path, check = task["path"], task_file.check_value
    section = task_file.check_fields(task["quality"], QUALITY_FIELDS, f"{path}: quality.", [])
    for name, on in section["gates"].items():
        if name not in GATE_NAMES:
            raise ConfigError(f"{path}: quality.gates.{name}: unknown gate{task_file.did_you_mean(name, GATE_NAMES)}; "
                              f"known gates: {', '.join(GATE_NAMES)}")
        check(on, task_file.field(name, "bool", task_file.REQUIRED, "true or false"), f"{path}: quality.gates.{name}")
    phrases = dict(section["phrases"])
    for name, added in phrases.items():
        if name not in PHRASES:
            raise ConfigError(f"{path}: quality.phrases.{name}: unknown phrase list{task_file.did_you_mean(name, PHRASES)}; "
                              f"known lists: {', '.join(PHRASES)}")
        if not isinstance(added, list) or not all(isinstance(phrase, str) and phrase.strip() for phrase in added):
            raise ConfigError(f"{path}: quality.phrases.{name}: expected a list of words or phrases, got {added!r}")
    cues = [cue for s in task["iteration_stages"] if s["name"] == "lm/user/guided" for cue in s["closing_cues"]]
    phrases["closing_cues"] = [*phrases.get("closing_cues", []), *cues]
    thresholds = {key: value for key, value in section.items() if key not in ("gates", "phrases")}
    return settings(section["gates"], phrases, **thresholds)


def reviewer(task: dict):
    """The review hook of the task's stages (`ctx["review"]`): `review` with the task's settings.

    >>> reviewer({"path": "task.yaml", "quality": {}, "iteration_stages": []})("*smiles* Hi!", "user")
    ('Hi!', ['stage direction'], [])
    """
    given = settings_for(task)
    return functools.partial(review, given=given)
