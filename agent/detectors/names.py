"""Person names in text, found without knowing whose they are.

Two signals, both from the words around a name rather than from the source's attributes:
- a title or a role before it ("Dr", "Mrs", "Radiographer:", "NOK:", "scanned by"), followed by
  an initial or a word that is not imaging vocabulary;
- a word of the shipped name lexicon (census surnames and given names) that is not imaging
  vocabulary. Lexicon words that are also ordinary English words (WHITE, LONG, HALL) count only
  beside another name signal: an initial, a title, another name word.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from agent.detectors import lexicon

Span = tuple[int, int]

# Words with their digits ("T1" is one word, not the initial T), hyphens and apostrophes.
_TOKEN = re.compile(r"[^\W_]+(?:['\u2019\-][^\W_]+)*\.?")
_JOINERS = re.compile(r"['\u2019]")
_TITLES = frozenset({
    "DR", "DOCTOR", "MR", "MRS", "MS", "MISS", "MX", "PROF", "PROFESSOR", "SIR", "DAME", "LADY", "LORD",
    "REV", "REVD", "FR", "SISTER", "NURSE", "MASTER", "MADAM", "MME", "MLLE", "HERR", "FRAU", "SR", "SRA",
})  # fmt: skip
# Titles that are also imaging abbreviations (MR imaging, DR radiography, MS multiple sclerosis):
# they introduce a name only when the next word is a lexicon name.
_TITLES_ALSO_ABBREVIATIONS = frozenset({"MR", "DR", "MS", "FR", "SR"})
_ROLES = frozenset({
    "RADIOGRAPHER", "RADIOLOGIST", "CONSULTANT", "REGISTRAR", "REPORTER", "OPERATOR", "TECHNOLOGIST",
    "TECHNICIAN", "SONOGRAPHER", "PHYSICIAN", "SURGEON", "REFERRER", "CLINICIAN", "NOK", "KIN", "CONTACT",
    "CARER", "GP", "HUSBAND", "WIFE", "SON", "DAUGHTER", "MOTHER", "FATHER", "PARTNER", "SPOUSE", "BROTHER",
    "GUARDIAN", "ATTN", "MIDWIFE", "PORTER", "SECRETARY", "BY", "PER", "NAME", "PATIENT", "PT", "FAO", "CC",
    "SIGNED", "AUTHOR", "OBSERVER", "ASSISTANT", "STUDENT", "TRAINEE", "FELLOW", "FRIEND", "NEIGHBOUR",
})  # fmt: skip
# Words that never start a name after a role ("scanned by the", "operator: none").
_NOT_A_NAME = frozenset({
    "THE", "A", "AN", "AND", "OR", "OF", "TO", "IN", "ON", "AT", "FOR", "WITH", "FROM", "AS", "IS", "WAS",
    "BE", "NO", "NOT", "NONE", "NIL", "NA", "N/A", "UNKNOWN", "ANONYMIZED", "ANONYMISED", "ANONYMOUS", "ANON",
    "SELF", "STAFF", "TEAM", "WARD", "DEPT", "DEPARTMENT", "HOSPITAL", "CLINIC", "PHONE", "TEL", "HIM", "HER",
    "THEM", "US", "WE", "YOU", "THIS", "THAT", "REQUEST", "PROTOCOL", "DEFAULT", "SYSTEM", "DEVICE", "AUTO",
})  # fmt: skip


@dataclass(frozen=True)
class _Token:
    start: int
    end: int
    word: str  # upper case, without a trailing full stop
    capitalised: bool  # "Smith" in mixed-case text: how prose writes a name

    @property
    def is_initial(self) -> bool:
        return len(self.word) == 1 and self.word.isalpha()


class NameFinder:
    """Finds person names; built once per profile (its vocabulary), cheap per text value."""

    def __init__(self, vocabulary: frozenset[str]) -> None:
        self.vocabulary = vocabulary
        self.surnames = lexicon.surnames()
        self.given_names = lexicon.given_names()
        self.ambiguous = lexicon.ambiguous_names()

    def _forms(self, word: str) -> list[str]:
        """The word as the census lists it: O'BRIEN as OBRIEN, SMITH-JONES as SMITH and JONES."""
        if word in self.vocabulary or word in _NOT_A_NAME or word in _ROLES or word in _TITLES or any(c.isdigit() for c in word):
            return []
        forms = [word]
        if "'" in word or "\u2019" in word:
            forms.append(_JOINERS.sub("", word))
        if "-" in word:
            forms.extend(part for part in word.split("-") if part and part not in self.vocabulary)
        return forms

    def _is_lexicon_name(self, word: str) -> bool:
        return any(f in self.surnames or f in self.given_names for f in self._forms(word))

    def _strong(self, word: str) -> bool:
        """A lexicon name that is no English word: a name wherever it stands."""
        return any(
            len(f) >= 3 and (f in self.surnames or f in self.given_names) and f not in self.ambiguous
            for f in self._forms(word)
        )

    def _candidate(self, token: _Token) -> bool:
        """Could this word be (part of) a name after a title or a role?"""
        word = token.word
        if token.is_initial:
            return True
        if any(c.isdigit() for c in word):
            return False
        return word not in self.vocabulary and word not in _NOT_A_NAME and word not in _TITLES

    def titled(self, text: str) -> Iterator[Span]:
        """A title or role, then one to three name words or initials."""
        tokens = _tokens(text)
        for index, token in enumerate(tokens):
            word = token.word
            if word not in _TITLES and word not in _ROLES:
                continue
            # "NOK: Smith" says what follows is a name; "Radiographer Smith" needs the word to look like one.
            colon = index + 1 < len(tokens) and ":" in text[token.end : tokens[index + 1].start]
            strict = not colon and (word in _TITLES_ALSO_ABBREVIATIONS or word in _ROLES)
            names = self._name_after(tokens, index + 1, strict=strict)
            if names:
                yield token.start, names[-1].end

    def _name_after(self, tokens: list[_Token], start: int, *, strict: bool) -> list[_Token]:
        taken: list[_Token] = []
        for token in tokens[start : start + 3]:
            if not self._candidate(token):
                break
            if strict and not token.is_initial and not self._is_lexicon_name(token.word) and not token.capitalised:
                break
            taken.append(token)
            if not token.is_initial and len(taken) >= 2:
                break
        # A run of initials alone ("Dr J.") is a name only when a word follows; otherwise it is an
        # abbreviation (MR T).
        while taken and taken[-1].is_initial:
            taken.pop()
        return taken

    def lexicon_names(self, text: str, *, alone: bool = True) -> Iterator[Span]:
        """Lexicon names: a distinctive one alone, an ambiguous one only beside another name signal.

        `alone=False` asks for the signal around every lexicon word: for kept values that are not
        prose (a project name like "Iowa QIN segmentation"), where one word is weak evidence.
        """
        tokens = _tokens(text)
        for index, token in enumerate(tokens):
            word = token.word
            if len(word) < 2 or not self._is_lexicon_name(word):
                continue
            if (alone and self._strong(word)) or self._in_name_context(tokens, index):
                yield token.start, token.end

    def _in_name_context(self, tokens: list[_Token], index: int) -> bool:
        for neighbour in (index - 1, index + 1):
            if not 0 <= neighbour < len(tokens):
                continue
            other = tokens[neighbour]
            if abs(other.start - tokens[index].end) > 3 and abs(tokens[index].start - other.end) > 3:
                continue  # far apart: not one name
            if other.is_initial:
                return True
            if other.word in _TITLES and neighbour < index:
                return True
            if len(other.word) >= 2 and self._is_lexicon_name(other.word) and (
                other.word not in self.ambiguous or other.word in self.given_names
            ):
                return True
        return False


def _tokens(text: str) -> list[_Token]:
    mixed = text != text.upper()
    out = []
    for match in _TOKEN.finditer(text):
        raw = match.group(0).rstrip(".")
        capitalised = mixed and len(raw) > 1 and raw[0].isupper() and not raw.isupper()
        out.append(_Token(match.start(), match.start() + len(raw), raw.upper(), capitalised))
    return out


__all__ = ["NameFinder"]
