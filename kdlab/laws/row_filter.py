"""Row filters such as ``loss >= 2.3 and N < 1e9``: parsed by a grammar of their own.

A filter selects the runs a fit uses (``--fit-where``, ``--holdout``) and is stored in the
fit JSON, which the report re-applies. Fit JSONs are shared artefacts, so a filter is data:
it is never handed to ``eval`` or ``pandas.eval``/``query`` (which resolve ``@name`` and
can call functions). The grammar knows columns, numbers, quoted text, comparisons,
``and``/``or``/``not`` (also ``&``, ``|``, ``~``) and parentheses; nothing else parses::

    filter     := or
    or         := and (("or" | "|") and)*
    and        := not (("and" | "&") not)*
    not        := ("not" | "~") not | "(" filter ")" | comparison
    comparison := operand (OP operand)+       chained: 2 < loss <= 3
    operand    := NAME | `any name` | NUMBER | 'text' | "text"
    OP         := < <= > >= == !=

Evaluation is vectorised on the DataFrame; a missing value never matches a comparison.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from kdlab.laws.io import LawInputError

COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_WORDS = {"and": "&", "or": "|", "not": "~"}
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])
      | (?P<name>[A-Za-z_]\w*)
      | `(?P<quoted_name>[^`]+)`
      | '(?P<text1>[^']*)' | "(?P<text2>[^"]*)"
      | (?P<op><=|>=|==|!=|<|>)
      | (?P<punct>[()&|~-])
    )""",
    re.VERBOSE,
)
WHAT_PARSES = (
    "a filter holds column names, numbers, quoted text, comparisons (< <= > >= == !=), "
    "and/or/not and parentheses, such as 'loss >= 2.3 and N < 1e9'"
)


@dataclasses.dataclass(frozen=True)
class Column:
    name: str


@dataclasses.dataclass(frozen=True)
class Comparison:
    operands: tuple[Column | float | str, ...]
    ops: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Logic:
    op: str  # "&", "|" or "~" (one part)
    parts: tuple[Any, ...]


Node = Comparison | Logic


@dataclasses.dataclass(frozen=True)
class RowFilter:
    """A parsed filter; ``mask(frame)`` is True for the rows it selects."""

    text: str
    tree: Node
    source: str = "the row filter"  # what messages call it: an option, a fit JSON's field

    def columns(self) -> set[str]:
        return _columns(self.tree)

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        missing = sorted(self.columns() - set(frame.columns))
        if missing:
            raise LawInputError(
                f"{self.source} {self.text!r} names the column(s) {', '.join(missing)}, "
                f"which the runs lack (they have {', '.join(map(str, frame.columns))})"
            )
        mask = _evaluate(self.tree, frame, f"{self.source} {self.text!r}")
        return pd.Series(mask, index=frame.index, dtype=bool)


def parse_filter(text: str, source: str = "the row filter") -> RowFilter:
    """Parse ``text``; anything outside the grammar is a LawInputError that names
    ``source`` and where reading stopped."""
    subject = f"{source} {text!r}"
    if not isinstance(text, str) or not text.strip():
        raise LawInputError(f"{subject} is empty or not text; {WHAT_PARSES}")
    parser = _Parser(subject, _tokens(text, subject))
    tree = parser.parse_or()
    if parser.peek() is not None:
        parser.fail(f"unexpected {parser.peek()[1]!r}")
    return RowFilter(text, tree, source)


def negated(text: str) -> str:
    """The filter selecting the rows ``text`` does not (``--holdout``'s complement)."""
    return f"not ({text})"


# ------------------------------------------------------------------------- parsing


def _tokens(text: str, subject: str) -> list[tuple[str, Any, int]]:
    """(kind, value, position) triples; an unknown character is refused where it stands."""
    tokens, pos = [], 0
    while text[pos:].strip():
        m = _TOKEN.match(text, pos)
        if m is None:
            start = len(text) - len(text[pos:].lstrip())
            raise LawInputError(
                f"{subject} cannot be read at {text[start : start + 12]!r} "
                f"(character {start + 1}); {WHAT_PARSES}"
            )
        kind, value, at = m.lastgroup or "", m.group(m.lastgroup or 0), m.start(m.lastgroup)
        if kind == "number":
            value = float(value)
            if not math.isfinite(value):
                raise LawInputError(
                    f"{subject} holds {m.group(kind)}, which is not a finite number"
                )
        elif kind in ("text1", "text2"):
            kind = "text"
        elif kind == "quoted_name":
            kind = "name"
        elif kind == "name" and value.lower() in _WORDS:
            kind, value = "punct", _WORDS[value.lower()]
        tokens.append((kind, value, at))
        pos = m.end()
    return tokens


class _Parser:
    """Recursive descent over the tokens, one method per rule of the grammar."""

    def __init__(self, subject: str, tokens: list[tuple[str, Any, int]]) -> None:
        self.subject, self.tokens, self.at = subject, tokens, 0

    def peek(self) -> tuple[str, Any, int] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, Any, int]:
        token = self.peek()
        if token is None:
            self.fail("it ends too early")
        self.at += 1
        return token

    def fail(self, what: str) -> NoReturn:
        token = self.peek()
        where = f" at character {token[2] + 1}" if token else ""
        raise LawInputError(f"{self.subject} cannot be read: {what}{where}; {WHAT_PARSES}")

    def next_is(self, kind: str, value: Any = None) -> bool:
        token = self.peek()
        return token is not None and token[0] == kind and value in (None, token[1])

    def parse_or(self) -> Node:
        parts = [self.parse_and()]
        while self.next_is("punct", "|"):
            self.take()
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else Logic("|", tuple(parts))

    def parse_and(self) -> Node:
        parts = [self.parse_not()]
        while self.next_is("punct", "&"):
            self.take()
            parts.append(self.parse_not())
        return parts[0] if len(parts) == 1 else Logic("&", tuple(parts))

    def parse_not(self) -> Node:
        if self.next_is("punct", "~"):
            self.take()
            return Logic("~", (self.parse_not(),))
        if self.next_is("punct", "("):
            self.take()
            inner = self.parse_or()
            if not self.next_is("punct", ")"):
                self.fail("a '(' is not closed")
            self.take()
            return inner
        return self.parse_comparison()

    def parse_comparison(self) -> Comparison:
        operands, ops = [self.parse_operand()], []
        while self.next_is("op"):
            ops.append(self.take()[1])
            operands.append(self.parse_operand())
            if not any(isinstance(o, Column) for o in operands[-2:]):
                self.fail("each comparison needs a column on one side")
        if not ops:
            self.fail("a comparison such as 'loss >= 2.3' was expected")
        return Comparison(tuple(operands), tuple(ops))

    def parse_operand(self) -> Column | float | str:
        sign = 1.0
        if self.next_is("punct", "-"):
            self.take()
            if not self.next_is("number"):
                self.fail("'-' must be followed by a number")
            sign = -1.0
        token = self.peek()
        if token is None or token[0] not in ("name", "number", "text"):
            self.fail("a column, number or quoted text was expected")
        kind, value, _ = self.take()
        if kind == "name":
            return Column(value)
        return sign * value if kind == "number" else value


# ---------------------------------------------------------------------- evaluation


def _columns(node: Node) -> set[str]:
    if isinstance(node, Logic):
        return set().union(*(_columns(p) for p in node.parts))
    return {o.name for o in node.operands if isinstance(o, Column)}


def _evaluate(node: Node, frame: pd.DataFrame, subject: str) -> np.ndarray:
    if isinstance(node, Logic):
        masks = [_evaluate(p, frame, subject) for p in node.parts]
        if node.op == "~":
            return ~masks[0]
        return np.logical_and.reduce(masks) if node.op == "&" else np.logical_or.reduce(masks)
    result = np.ones(len(frame), dtype=bool)
    for i, op in enumerate(node.ops):
        left, right = _value(node.operands[i], frame), _value(node.operands[i + 1], frame)
        result &= _compare(left, op, right, subject)
    return result


def _value(operand: Column | float | str, frame: pd.DataFrame) -> pd.Series | float | str:
    return frame[operand.name] if isinstance(operand, Column) else operand


def _is_text(value: pd.Series | float | str) -> bool:
    if isinstance(value, pd.Series):
        return not pd.api.types.is_numeric_dtype(value)
    return isinstance(value, str)


def _compare(
    left: pd.Series | float | str, op: str, right: pd.Series | float | str, subject: str
) -> np.ndarray:
    """One comparison, element-wise (one side is a column): numbers with numbers, text
    with text (== and != only); a missing value matches nothing."""
    if _is_text(left) != _is_text(right):
        raise LawInputError(
            f"{subject} compares text with a number; quote text, and compare "
            "numeric columns with numbers"
        )
    if _is_text(left) and op not in ("==", "!="):
        raise LawInputError(f"{subject} orders text with {op}; text takes == or != only")
    outcome = COMPARISONS[op](left, right)
    for side in (left, right):
        if isinstance(side, pd.Series):
            outcome = outcome & side.notna()
    return outcome.to_numpy(dtype=bool)
