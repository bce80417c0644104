"""Comparing texts: one normal form, word shingles and their Jaccard similarity.

The stages use these to catch copies and repeats, and `stats` uses the same ones to count them,
so "exact duplicate" means one thing everywhere.

    >>> normalise("Don't panic -- it's only BREAD!")
    "don't panic it's only bread"
    >>> round(jaccard(shingles("I love baking bread at home"), shingles("I love baking bread on Sundays")), 2)
    0.33
"""

from __future__ import annotations

import re

WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")  # keeps "don't" one word; quote marks around a word go


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def normalise(text: str) -> str:
    """Lower case, words only, single spaces: texts equal under this are exact duplicates."""
    return " ".join(words(text))


def shingles(text: str, n: int = 3) -> set:
    """The text's word n-grams (a shorter text is one gram of all its words)."""
    tokens = words(text)
    return {tuple(tokens[i:i + n]) for i in range(max(1, len(tokens) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0
