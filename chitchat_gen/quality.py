r"""Quality gates: the mistakes models make in generated text, found by name, cleaned where safe.

A training set inherits every mistake of the model that wrote it; a small model makes more of
them, a large one fewer. The stages call `clean` on every reply (it removes what can go without
changing the meaning: labels, prompt lines the model copied, a repeated paragraph or sentence,
the other speaker's next line) and `problems` on what is left (what cannot be cleaned: the stage
retries once, then drops the conversation with the problem's name). `stats` counts the same
checks over a dataset, so the figures mean what the gates mean.

    >>> clean("Situation: a rainy day.\nI love rain! I love rain!")
    ('I love rain!', ['leaked label', 'repeated sentence'])
    >>> problems("Sure, I'd be happy to help you plan [insert city here].", "user")
    ['placeholder', "assistant's voice"]
    >>> is_closing("Thanks a lot, talk soon!", ())
    True
"""

from __future__ import annotations

import collections
import itertools
import math
import re
import threading

from .prompts import CLOSING_CUES
from .text import jaccard, normalise, shingles, words

# "[insert location here]", "[Your name]", "<name>", "{{topic}}": slots a template meant to be filled.
PLACEHOLDER = re.compile(r"\[\s*(?:insert|add|enter|your|name|placeholder|topic|location|date|user)\b[^\]]*\]"
                         r"|<\s*(?:name|your[\w ]*|user|location|date|topic|city|placeholder)\s*>|\{\{[^}]*\}\}", re.I)
# A speaker label at the very start of a reply: the content after it is the reply.
LABEL = re.compile(r"^\s*\**(user|assistant|scenario|message|instruction|your message|reply)\**\s*:\s*\**\s*", re.I)
# A line that starts with a label of our prompts (or a made-up one): the model copied the prompt's shape.
LEAKED_LABEL = re.compile(r"^\s*\**(situation|scenario|persona|instruction|hint|context|note|who you are|sender|"
                          r"general instruction|(chat|conversation)( \w+){0,3}|(\w+ )?(your|my) (\w+ ){0,2}message|the next one( is)?|"
                          r"(your|my) (answer|response|reply)|the user|role|instruction for your next message|this is (your|my) (last|final) message|"
                          r"here'?s (a|an|your|my) ([\w-]+ ){0,2}(message|response|reply)|one short sentence)\**\s*:", re.I)
NEXT_SPEAKER = re.compile(r"\n\s*\**(user|assistant|human|ai)\**\s*:", re.I)
ASSISTANT_VOICE = re.compile(
    r"\b(as an ai|i'?m an ai|as a (large )?language model|how (can|may) i (help|assist)( you)?|"
    r"i'?m here to (help|assist)|(i'?ll|i'?m|to) be your (\w+ ){0,2}assistant|"
    r"(i'?d|i would|i'?m|i am|i'?ll) (be )?(so |very |really |more than )?(happy|glad|delighted|pleased|thrilled|excited) "
    r"to (help|assist)|assist you with|i'?m (a|an|your) (\w+ ){0,2}(ai|assistant|chatbot|language model)|"
    r"let me know if (you|there'?s)|feel free to (ask|reach out)|is there anything else i can|"
    r"happy to help|i hope (this|that) helps|(happy|glad) to be of (service|help)|at your service)\b", re.I)
ECHO = 0.6  # share of the user's 3-grams that an assistant reply repeats to count as echoing it
PARROT = 5  # words in a row copied from the instruction that make a message a parroted instruction
# A closing is a sentence or two: the seed closings have at most 3 sentences and 21 words.
CLOSING_SENTENCES, CLOSING_WORDS = 4, 60
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
# Small models write about a goodbye instead of saying it: "a note that says thank you", "just
# say goodbye", 'a confident "Thanks"'.
QUOTED = re.compile(r'"[^"]*"|“[^”]*”')
MENTIONED = {"says", "saying", "said"}
# A scenario copies an earlier one when either holds this share of the other's word weight (CopyIndex).
COPY_SHARE = 0.9
KEYS = 8  # a text's rarest words, filed by pairs: a copy that changes two of them keeps the other six's 15 pairs


def clean(text: str) -> tuple[str, list[str]]:
    r"""`text` without what can safely go, and the names of what went.

    >>> clean('User: "Nice! What next?"\nAssistant: Well...')
    ('Nice! What next?', ['next speaker', 'label'])
    """
    fixes = []
    kept = NEXT_SPEAKER.split(text, maxsplit=1)[0]
    fixes += ["next speaker"] if kept != text else []
    unlabelled = LABEL.sub("", kept.strip()).strip()
    fixes += ["label"] if unlabelled != kept.strip() else []
    lines = [line for line in unlabelled.splitlines() if line.strip()]
    content = [line for line in lines if not LEAKED_LABEL.match(line)]
    if content and len(content) < len(lines):  # a reply made only of a leaked line stays: `problems` names it
        fixes.append("leaked label")
        lines = content
    paragraphs = _unique(lines, lambda a, b: normalise(a) == normalise(b) or jaccard(shingles(a), shingles(b)) >= 0.8)
    fixes += ["repeated paragraph"] if len(paragraphs) < len(lines) else []
    text = "\n".join(paragraphs)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    split = re.split(r"(?<=[.!?])[ \t]+", text)
    once = _unique(split, lambda a, b: normalise(a) == normalise(b))
    if len(once) < len(split):
        fixes.append("repeated sentence")  # small models loop: "I'm so glad! I'm so glad! ..."
        text = " ".join(once)
    return text, fixes


def _unique(items: list[str], same) -> list[str]:
    kept = []
    for item in items:
        if not any(same(item, earlier) for earlier in kept):
            kept.append(item)
    return kept


def problems(text: str, role: str, previous: str = "") -> list[str]:
    """What is wrong with a cleaned message that cleaning cannot fix, by name.

    `role` is "user", "assistant" or "scenario"; `previous` the message it answers (for echoes).
    """
    found = []
    if PLACEHOLDER.search(text):
        found.append("placeholder")
    if any(LEAKED_LABEL.match(line) for line in text.splitlines()):
        found.append("leaked label")
    if role == "user" and ASSISTANT_VOICE.search(text):
        found.append("assistant's voice")
    if role == "assistant" and echoes(text, previous):
        found.append("echo of the user")
    return found


def echoes(reply: str, message: str) -> bool:
    """The reply repeats most of the message it answers (a message of 6 words or more)."""
    grams = shingles(message)
    return len(normalise(message).split()) >= 6 and len(grams & shingles(reply)) / len(grams) >= ECHO


def is_closing(text: str, extra_cues) -> bool:
    """The message reads as a goodbye: it asks nothing, it is short, and one of its last two
    sentences thanks or says goodbye (prompts.CLOSING_CUES, plus a task's own cues).

    A cue anywhere is not enough: small models put "thank" inside rambling text that goes on.

    >>> is_closing("Great, thanks! I'll try that tomorrow.", ())
    True
    >>> is_closing("Thanks! What else can I plant in spring?", ())
    False
    """
    found = sentences(QUOTED.sub(" ", text))  # a thanks in quotes is talked about, not said
    return ("?" not in text and len(found) <= CLOSING_SENTENCES and len(words(text)) <= CLOSING_WORDS
            and any(has_cue(sentence, extra_cues) for sentence in found[-2:]))


def cut_after_goodbye(text: str, extra_cues) -> str:
    """A closing message that ran on past its goodbye, cut after it; any other text as it is.

    On the closing turn what follows the goodbye is the model writing on (like the other
    speaker's next line), so it can go; a message that is already a closing is kept whole.

    >>> cut_after_goodbye("Thanks, that was fun. Bye! PS: what is your favourite colour?", ())
    'Thanks, that was fun. Bye!'
    """
    if is_closing(text, extra_cues):
        return text
    found = sentences(text)
    last = max((i for i, sentence in enumerate(found) if has_cue(sentence, extra_cues)), default=None)
    return text if last is None else " ".join(found[:last + 1])


def sentences(text: str) -> list[str]:
    return [part.strip() for part in SENTENCE_END.split(text) if part.strip()]


def has_cue(sentence: str, extra_cues) -> bool:
    """A thanks or goodbye said, not talked about: not in quotes, not after "says" or "just say".

    >>> has_cue("Thanks, see you!", ()), has_cue('Just say goodbye, or a quick "thanks".', ())
    (True, False)
    """
    said = normalise(QUOTED.sub(" ", sentence)).split()
    for cue in (normalise(cue).split() for cue in (*CLOSING_CUES, *extra_cues)):
        if any(said[i:i + len(cue)] == cue and not mentioned(said[max(0, i - 2):i]) for i in range(len(said))):
            return True
    return False


def mentioned(before: list[str]) -> bool:
    """The two words before a cue make it talk about a goodbye: "says thanks", "just say goodbye"
    (but "I say thanks", "wanted to say thank you" say it)."""
    return bool(before) and (before[-1] in MENTIONED or before[-1] == "say" and before[:1] not in (["i"], ["to"], ["we"]))


def parrots(text: str, instruction: str) -> bool:
    """The message copies PARROT words in a row from the instruction it was given.

    >>> parrots("Wrap up in a sentence or two: bye!", "This is your last message: wrap up in a sentence or two.")
    True
    """
    return bool(shingles(text, PARROT) & shingles(instruction, PARROT)) and len(words(text)) >= PARROT


def copies(text: str, earlier: list[str]) -> bool:
    """`text` copies one of `earlier` (see CopyIndex); for a short list checked once, as `stats` does.

    >>> copies("A retired teacher wants to chat about astronomy. She has a new telescope.",
    ...        ["A retired teacher wants to chat about astronomy."])
    True
    """
    index = CopyIndex(limit=0)
    index.pin(earlier)
    return index.copy_of(text) is not None


class CopyIndex:
    """Earlier texts for the copy check, each kept as its set of words and found by its rare words.

    A copy is a text that holds at least COPY_SHARE of an earlier one's word weight, or whose
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

    def texts(self) -> list[str]:
        """The texts added (not the pinned ones), oldest first."""
        with self.lock:
            return list(self.recent)

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

    def copy_of(self, text: str) -> str | None:
        """The earlier text that `text` copies, or None."""
        found = frozenset(words(text))
        with self.lock:
            shared_pairs = collections.Counter(itertools.chain.from_iterable(
                self.by_pair[pair] for pair in pairs(found) if pair in self.by_pair))
            weights = {}
            total = self._weight(found, weights)
            close = sorted(i for i, shared in shared_pairs.items() if shared >= self.held[i][3])
            for i in close:  # sorted: the oldest copy is named, whatever order the index holds them in
                earlier, held, _, _ = self.held[i]
                if self._weight(found & held, weights) >= COPY_SHARE * min(total, self._weight(held, weights)):
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
