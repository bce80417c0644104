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

The phrase lists are English; a task adds its own under `quality.phrases` (config.py).
"""

from __future__ import annotations

import collections
import itertools
import math
import re
import threading
from functools import lru_cache

from .text import jaccard, normalise, shingles, words

# --- the phrase lists ------------------------------------------------------------------------
# Each list is named data a task extends under `quality.phrases.<list>`; how a list's entries
# match is said above it. Entries of ours may be regular expressions; a task's are plain text.

# Regex fragments, matched case-insensitively after "[" or "<": slots a template meant to be
# filled ("[insert location here]", "[Your name]", "<name>"); "{{...}}" always is one.
PLACEHOLDERS = ("insert", "add", "enter", "your", "name", "placeholder", "topic", "location", "date", "user", "city")
# Regex fragments: a label at the very start of a reply; the content after it is the reply. Kin
# and titles may carry a capitalised name ("Auntie Jane:", "Dr Patel:"): a model that writes a
# transcript names its speakers. "The person:" opens a scenario that copies lm/scenario's line on
# its persona: the rest is a scenario for that person.
SPEAKER_LABELS = ("user", "assistant", "human", "ai", "me", "scenario", "message", "instruction", "your message", "reply",
                  "the person", "auntie", "aunt", "uncle", "grandma", "granny", "grandpa", "mom", "mum", "dad", "mr", "mrs", "ms",
                  "miss", "dr", "doctor", "professor", "chef", "coach", "captain")
# Regex fragments: a line that starts with one of these and a colon copies the shape of our
# prompts (or makes one up): "Situation: ...", "Your last message: ...", "Chat to: writer123".
LEAKED_LABELS = ("situation", "scenario", "persona", "instruction", "hint", "context", "note", "who you are", "sender",
                 "general instruction", r"(chat|conversation)( \w+){0,3}", r"(\w+ )?(your|my) (\w+ ){0,2}message",
                 r"the next one( is)?", r"(your|my) (answer|response|reply)", "the user", "role",
                 "instruction for your next message", r"this is (your|my) (last|final) message",
                 r"here'?s (a|an|your|my) ([\w-]+ ){0,2}(message|response|reply)", "one short sentence")
# Regex fragments: words in parentheses or brackets that make them a note about the chat, not
# part of it: "(next message to the assistant is ...)", "(reminder: don't include yourself in this chat)".
META_NOTES = ("assistant", "chatbot", "the user", r"reminder\s*:", r"note\s*:", "instructions?", "persona", "scenario",
              "continuation", "in character", "role-?play", r"(the|next|last|previous|this|my|your) message",
              r"(this|the) (chat|conversation)")
# Regex fragments: a sentence that starts like this is about the message: "Here is a continuation of the previous message."
META_LINES = (r"here('s| is) (a |the |my )?(continuation|rest|next part)\b", r"(this is )?(a |the )?continuation of\b",
              r"continuing (from )?(the|my|your) (previous|last)", r"\(?continued\)?$",
              r"the following is (the|a|my|your) (message|reply|response)", r"the (original|last|next|previous) message (was|is)\b",
              r"the message is\s*:", r"please feel free to remove this",
              r"(please )?(modify|rewrite|revise|edit|change|continue|adjust|update) (the|this|your|my) "
              r"(conversation|dialogue|chat|message|response|reply) (to|so|by|with)\b")
# Plain words, and their -s, -ed and -ing forms: parentheses or asterisks that start with one
# are a stage direction or a role-play action ("(laughs)", "(smiling knowingly)", "*leans back in chair*").
STAGE_DIRECTIONS = ("laugh", "chuckle", "giggle", "smile", "grin", "sigh", "nod", "wink", "shrug", "pause", "gasp",
                    "cough", "lean", "wave", "blush", "beam", "smirk", "sob", "hug", "whisper", "shout", "exclaim",
                    "glance", "yawn", "stretch", "clap", "gesture", "snicker", "scratch", "tilt", "sip", "sniff",
                    "frown", "blink", "mutter", "grumble", "wipe", "squeal", "cheer", "beaming", "clears", "looks",
                    "point", "notice", "gaze", "stare")
# Regex fragments: a user message saying these talks as the assistant.
ASSISTANT_VOICE = (
    r"as an ai", r"i'?m an ai", r"as a (large )?language model", r"how (can|may) i (help|assist)(?! (?!you\b)\w)",
    r"i'?m here to (help|assist)", r"(i'?ll|i'?m|to) be your (\w+ ){0,2}assistant",
    r"(i'?d|i would|i'?m|i am|i'?ll) (be )?(so |very |really |more than )?(happy|glad|delighted|pleased|thrilled|excited) "
    r"to (help|assist)", r"assist you with", r"i'?m (a|an|your) (\w+ ){0,2}(ai|assistant|chatbot|language model)",
    r"let me know if (you|there'?s)", r"feel free to (ask|reach out)", r"is there anything else i can",
    r"happy to help", r"i hope (this|that) helps", r"(happy|glad) to be of (service|help)", r"at your service",
    r"what can i (do|help you with)( for you)?", r"how can i be of (help|assistance|service)",
    r"what would you like to (talk|chat) about", r"is there (anything|something) i can (do|help)",
)
# Regex fragments, matched on the words of one clause of a sentence (lower case, no punctuation):
# what a closing says. A closing takes leave, thanks, or wishes well (is_closing), and people say
# each in many words, so these name the forms, not the idioms: a verb of leaving after a "have
# to" ("gotta go", "I should get going", "need to run"), "nice/great/fun ... talking/chatting",
# "see/talk to/catch you ...". What is not a closing stays out by form too: "have a great day"
# only as a wish (alone or after "you", "hope you", "and": not "I have a great day so far"),
# "take care" not "of", "see you" not after "to" ("I'd love to see you there"), "thanks" not
# "thanks to the rain", "grateful" only for something ("grateful for the people who inspire me"
# is no goodbye). A cue after "no", "not", "don't" ... in its clause is not said ("No, no thanks").
_MODAL = (r"(?:gotta|got to|have to|has to|need to|should|must|better|had better|ought to|gonna|gonna have to|"
          r"going to have to|will have to|i'll have to|time to|time for me to|about to|going to|i'm going to)")
_LEAVE = (r"(?:go|go now|run|leave|split|jet|bounce|dash|scoot|scat|blast|fly|head out|head off|head home|head to \w+|"
          r"get going|get goin|be going|be off|get off|get back to \w+|get to (?!know\b)\w+|sign off|sign out|log off|log out|hop off|take off|"
          r"peace out|get ready for \w+|go to bed|go to sleep|head to bed|let you go|leave you to it|"
          r"(?:end|close) (?:it|this|the chat|this chat|the conversation|this conversation|out))")
_PARTING = r"(?:again|soon|sometime|some time|another time|in the future|later|tomorrow|around|next time)"
TAKING_LEAVE = (
    rf"{_MODAL}(?: \w+)? {_LEAVE}", r"gtg|g2g|ttyl|ttys", r"(?:i'm|im|i am) (?:off|out|outta here|leaving|done for (?:the day|today|now))",
    r"(?:heading|signing|logging|hopping) (?:out|off)", r"(?:i'm|im|i am) (?:going|off|headed|heading) to (?:bed|sleep|class|work)",
    r"bye+|bye bye|byebye|goodbye|good bye|buh bye|farewell|adios|adieu|ciao|cheerio|toodles|peace out|^peace$|cheers",
    r"(?<!\bto )(?:see|c) (?:you|ya|yah|u|y'all)(?! there)", r"cya|seeya|^(?:\w+ )?laters?$", r"until next time|till next time|til next time",
    rf"(?:talk|chat|speak)(?: (?:to|with) (?:you|ya|u))? {_PARTING}", rf"catch (?:you|ya|u|each other)(?: \w+){{0,3}} {_PARTING}|catch you on the flip side",
    rf"(?:connect|reconnect|meet|run into (?:you|each other)|bump into (?:you|each other)|cross paths)(?: \w+)? {_PARTING}",
    r"(?:i'll|i will|we'll|we will) (?:talk|chat) (?:to|with) (?:you|ya)", r"until we meet again",
    r"good ?night|nighty? night|night night|^night$|^nite$",
    r"take care(?! of)", r"(?:cut|cutting) (?:this|it|our \w+|the \w+) short", r"(?:it was|it's been|it has been|been|what) a pleasure",
    r"(?:nice|great|good|fun|lovely|awesome|cool|wonderful|fantastic|amazing|a pleasure|pleasure|a blast|a joy) "
    r"(?:talking|chatting|speaking|meeting you|getting to know you|talkin|chattin|to talk|to chat|to speak)",
    r"(?:nice|great|good|fun|lovely|awesome|wonderful|interesting|long|fun little) (?:chat|conversation|convo|talk|discussion)",
    r"(?:this (?:was|has been|'s been)|it (?:has|'s) been) (?:so |really |very |super |a lot of |such )?"
    r"(?:fun|great|lovely|nice|helpful|a pleasure|a blast|awesome|wonderful|fantastic)(?= ?\w*$| talking| chatting)",
    r"(?:enjoyed|loved|liked|love|enjoy) (?:talking|chatting|our chat|the chat|this chat|our conversation|the conversation|this conversation)",
)
THANKS = (
    r"thank (?:you|u|ya|ye|yall|y'all)", r"thankyou|thanku|thanx|thnx|thx|tysm|tyvm|many thanks|much appreciated",
    r"thanks(?! to (?!you|u\b))", r"can't thank you enough", r"appreciate (?:it|that|this|you|your \w+|the \w+|all)",
    r"(?:i'm|i am|so|very|really) grateful|grateful for (?:your|the|this|our|all) (?:\w+ )?(?:help|time|chat|advice|tips|conversation|ideas|support|patience)",
)
WISHES = (
    r"(?:^|(?:you|u|ya|and|now|so|also|ok|okay|well|please|hope you|wish you|alright|then|oh|yeah) )"
    r"have (?:an? (?:\w+ ){0,4}(?:day|night|evening|morning|afternoon|week|weekend|one|time|trip|flight|summer|semester|"
    r"holiday|holidays|break|lunch|dinner|meal|class|test|exam|game|shift|vacation|\w+day)|fun|a blast)",
    r"^(?:and |so |now |also )?enjoy\b|hope (?:you|u) (?:have|enjoy|feel better|get some rest|sleep well|do well|win)|hope (?:all|it|everything|things) goes? well",
    r"good ?luck|best of luck|all the best|best wishes|wishing you|take it easy|stay safe|be safe|be well|rest well|sleep well|"
    r"sweet dreams|feel better soon|good day to you|wish you (?:\w+ )?(?:luck|the best|well)",
    r"^(?:\w+ )?(?:and )?(?:you|u) too$",
)
CLOSING_CUES = (*TAKING_LEAVE, *THANKS, *WISHES)
# Plain words: a cue in a clause after one of these (up to four words before it) is denied or
# supposed, not said: "No need to say goodbye", "I don't have to go", "if you want to talk again later".
NEGATIONS = ("no", "not", "don't", "dont", "never", "won't", "wont", "didn't", "doesn't", "without", "nor", "cannot", "if")
# Plain words: a cue right after one of these is talked about, not said ("a note that says thank you").
MENTIONED = ("says", "saying", "said")
# Plain words: a user message whose list items (two or more) all open with one of these restates
# its instruction ("1. Open a new topic.\n2. Ask an open question."); a user's own list names
# things or asks ("- tent\n- stove", "1. How long should I rest the dough?").
INSTRUCTION_VERBS = ("write", "ask", "open", "share", "tell", "say", "keep", "mention", "reply", "respond", "pick", "use",
                     "include", "avoid", "thank", "express", "follow", "introduce", "continue", "stay", "end", "start",
                     "focus", "add", "greet", "talk", "discuss", "offer", "make", "be", "show", "give", "provide")
# Regex fragments: an assistant reply saying these speaks as one of the user's kind, in the
# user's voice ("Fellow carpenters!", "As a fellow gardener, I ...").
USER_VOICE = (r"^\W*(?:(?:hey|hi|hello|greetings|dear|oh|well|welcome)\W+)?(?:my )?fellow \w+", r"\bas a fellow\b",
              r"\bi'?m a fellow\b")
# Plain words: a scenario that opens with one of these speaks as someone (I, you, we), greets or
# answers: "I'm so glad I could help!" is a reply, not a scenario.
NOT_A_SCENARIO = ("i", "i'm", "i'd", "i'll", "i've", "im", "me", "my", "we", "we're", "we'll", "our", "us", "you",
                  "you're", "your", "thanks", "thank", "sure", "hello", "hi", "hey", "yes", "no", "okay", "ok", "wow",
                  "oh", "here", "here's", "how", "what", "let's", "glad", "great", "absolutely", "certainly")
PHRASES = {"placeholders": PLACEHOLDERS, "speaker_labels": SPEAKER_LABELS, "leaked_labels": LEAKED_LABELS,
           "meta_notes": META_NOTES, "meta_lines": META_LINES, "stage_directions": STAGE_DIRECTIONS,
           "assistant_voice": ASSISTANT_VOICE, "instruction_verbs": INSTRUCTION_VERBS, "user_voice": USER_VOICE,
           "closing_cues": CLOSING_CUES, "mentioned": MENTIONED, "negations": NEGATIONS,
           "not_a_scenario": NOT_A_SCENARIO}

# --- thresholds (a task sets them under `quality:`) ------------------------------------------
THRESHOLDS = {
    # A scenario copies an earlier one when either holds this share of the other's word weight (CopyIndex).
    "copy_share": 0.9,
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


def pinned(texts) -> CopyIndex:
    """A CopyIndex holding `texts` for good and nothing else: a fixed list, built once, checked many times
    (`stats` against the seeds; `review` given a list).

    >>> seeds = pinned(["A retired teacher wants to chat about astronomy."])
    >>> seeds.copy_of("A retired teacher wants to chat about astronomy. She has a new telescope.")
    'A retired teacher wants to chat about astronomy.'
    """
    index = CopyIndex(limit=0)
    index.pin(texts)
    return index


def near_duplicate(text: str, about: dict) -> bool:
    threshold, grams = about["near_duplicate"], shingles(text)
    return threshold is not None and any(jaccard(grams, other) >= threshold
                                         for other in map(shingles, about["earlier"].texts(pinned=True)))


KEYS = 8  # a text's rarest words, filed by pairs: a copy that changes two of them keeps the other six's 15 pairs


class CopyIndex:
    """Earlier texts for the copy check, each kept as its set of words and found by its rare words.

    A copy is a text that holds at least `share` (THRESHOLDS' copy_share) of an earlier one's word weight, or whose
    own weight the earlier one holds (a seed copied, with a sentence added, or cut short). A
    word weighs more the fewer texts held here use it (IDF: 1 + ln((texts + 1) / (texts with
    it + 1))), so the frame most scenarios share ("a ... wants to chat about") counts little
    and the topic much: "A retired teacher wants to chat about birdwatching." is not a copy of
    "... about astronomy.", while a long seed with a word changed is.

    Each text is filed under the pairs of its KEYS rarest words when it is added. A check looks
    up the pairs of the new text's words and weighs only the texts whose rare words it holds
    all but two of (a copy changes a word or two): it reads the texts that share rare words
    with it, never every text held, and no text's words are split again. Pinned texts (a task's
    seeds) stay; the others are kept up to `limit`, the oldest going first. A class for its lock
    only: worker threads add and check at once, and Ray pickles the memory to its workers (each
    gets a lock of its own).

    >>> index = CopyIndex(limit=1000)
    >>> index.pin(["A nervous new cat owner wants to stop her kitten from shredding the living-room sofa."])
    >>> index.add("A retired teacher wants to chat about astronomy.")
    >>> index.copy_of("A retired teacher wants to chat about birdwatching.") is None
    True
    >>> index.copy_of("A nervous new cat owner wants to stop her kitten from scratching the living-room sofa.")
    'A nervous new cat owner wants to stop her kitten from shredding the living-room sofa.'
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.lock = threading.Lock()
        self.held = {}  # id -> (text, its words, its key pairs, how many of them a copy keeps)
        self.used = collections.Counter()  # word -> how many held texts use it
        self.by_pair = {}  # (word, word) -> ids of the texts it is a key pair of
        self.pinned = set()  # texts never dropped (a task's seeds)
        self.order = collections.deque()  # ids of the other texts, oldest first
        self.recent = collections.deque()  # their texts, in step with `order` (texts() is one C-level copy)
        self.next_id = 0

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, lock=threading.Lock())

    def __len__(self) -> int:
        return len(self.order)

    def texts(self, pinned: bool = False) -> list[str]:
        """The texts added, oldest first; with `pinned`, the pinned ones before them."""
        with self.lock:
            return [*self.pinned, *self.recent] if pinned else list(self.recent)

    def pin(self, texts) -> None:
        """Hold `texts` for good (a text already pinned is skipped, so a stage can pin its seeds on every call)."""
        with self.lock:
            for text in texts:
                if text not in self.pinned:
                    self.pinned.add(text)
                    self._hold(text)

    def add(self, text: str) -> None:
        with self.lock:
            self.order.append(self._hold(text))
            self.recent.append(text)
            while len(self.order) > self.limit:
                self._drop(self.order.popleft())
                self.recent.popleft()

    def copy_of(self, text: str, share: float = THRESHOLDS["copy_share"]) -> str | None:
        """The earlier text that `text` copies (holding `share` of its word weight, or it of ours), or None."""
        found = frozenset(words(text))
        with self.lock:
            shared_pairs = collections.Counter(itertools.chain.from_iterable(
                self.by_pair[pair] for pair in pairs(found) if pair in self.by_pair))
            weights = {}
            total = self._weight(found, weights)
            close = sorted(i for i, shared in shared_pairs.items() if shared >= self.held[i][3])
            for i in close:  # sorted: the oldest copy is named, whatever order the index holds them in
                earlier, held, _, _ = self.held[i]
                if self._weight(found & held, weights) >= share * min(total, self._weight(held, weights)):
                    return earlier
        return None

    def _hold(self, text: str) -> int:
        held = frozenset(words(text))
        self.used.update(held)
        keys = sorted(held, key=lambda word: (self.used[word], word))[:KEYS]  # ties: by the word, not set order
        i, self.next_id = self.next_id, self.next_id + 1
        self.held[i] = (text, held, pairs(keys), math.comb(max(2, len(keys) - 2), 2))  # a copy keeps all but two keys
        for pair in self.held[i][2]:
            self.by_pair.setdefault(pair, set()).add(i)
        return i

    def _drop(self, i: int) -> None:
        _, held, keys, _ = self.held.pop(i)
        self.used.subtract(held)
        for word in held:
            if not self.used[word]:
                del self.used[word]
        for pair in keys:
            self.by_pair[pair].discard(i)
            if not self.by_pair[pair]:
                del self.by_pair[pair]

    def _weight(self, found, weights: dict) -> float:
        """The words' summed weight; `weights` keeps each word's, computed once per check."""
        for word in found - weights.keys():
            weights[word] = 1 + math.log((len(self.held) + 1) / (self.used[word] + 1))
        return sum(weights[word] for word in found)


def pairs(found) -> list[tuple]:
    """The pairs of words in `found`, each in sorted order (a text of one word is its own pair)."""
    ordered = sorted(found)
    return list(itertools.combinations(ordered, 2)) or [tuple(ordered)]


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
           earlier: CopyIndex | list[str] | None = None, near_duplicate: float | None = None) -> tuple[str, list[str], list[str]]:
    r"""What is wrong with one message: (the text cleaned, labels of what went, labels of the problems left).

    `kind` is one of KINDS; `given` the task's settings (`task["quality"]`, else the defaults);
    `previous` the message it answers (echoes); `instruction` what the user was told (parroting)
    and `earlier` the seeds and earlier scenarios, a CopyIndex or a list (None: the gates that
    need them do not run);
    `near_duplicate` lm/scenario's threshold.

    >>> review('User: "Nice! What next?"\nAssistant: Well...', "user")
    ('Nice! What next?', ["the other speaker's next line", 'speaker label', 'quotes around the message'], [])
    >>> review("*smiles*", "assistant")
    ('*smiles*', [], ['stage direction'])
    >>> review("Your message:\nMe: Thanks, bye!", "closing")[:2]  # two labels: cleaned until none is left
    ('Thanks, bye!', ['speaker label'])
    """
    if earlier is not None and not isinstance(earlier, CopyIndex):
        earlier = pinned(earlier)
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
