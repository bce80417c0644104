"""The copy check's memory: earlier texts, each found again by its rare words (`CopyIndex`).

The scenario gate `copy` asks it whether a new scenario copies a seed or an earlier one; the run
keeps one (bounded) across its conversations, and Ray ships it to each worker.

    >>> index = pinned(["A retired teacher wants to chat about astronomy."])
    >>> index.copy_of("A retired teacher wants to chat about astronomy. She has a new telescope.")
    'A retired teacher wants to chat about astronomy.'
"""

from __future__ import annotations

import collections
import itertools
import math
import threading

from .text import words

COPY_SHARE = 0.9  # a scenario copies an earlier one when either holds this share of the other's word weight


def pinned(texts) -> CopyIndex:
    """A CopyIndex holding `texts` for good and nothing else: a fixed list, built once, checked many times
    (`stats` against the seeds; `review` given a list).
    """
    index = CopyIndex(limit=0)
    index.pin(texts)
    return index


KEYS = 8  # a text's rarest words, filed by pairs: a copy that changes two of them keeps the other six's 15 pairs


class CopyIndex:
    """Earlier texts for the copy check, each kept as its set of words and found by its rare words.

    A copy is a text that holds at least `share` (COPY_SHARE; a task's `quality.copy_share`) of an
    earlier one's word weight, or whose own weight the earlier one holds (a seed copied, with a sentence added, or cut short). A
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

    def copy_of(self, text: str, share: float = COPY_SHARE) -> str | None:
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
