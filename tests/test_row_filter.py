"""Row filters (--fit-where, --holdout, a fit JSON's fit_where) read by their own grammar.

The grammar selects the same rows pandas' expression evaluator did for every filter kdlab's
README, RESULTS.md and fit JSONs use, and refuses anything else in one sentence.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kdlab.laws.io import LawInputError
from kdlab.laws.row_filter import negated, parse_filter

RUNS = pd.DataFrame(
    {
        "loss": [2.0, 2.5, np.nan, 3.0, 2.2],
        "N": [1e8, 1e9, 1e9, 2e9, 5e8],
        "role": ["teacher", "student", "teacher", None, "supervised"],
        "Model Size": [1, 2, 3, 4, 5],
    }
)


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        ("loss >= 2.2", [1, 3, 4]),  # the README's and RESULTS.md's form
        ("loss>=2.2", [1, 3, 4]),
        ("2.1 < loss <= 2.5", [1, 4]),  # chained, as in Python
        ("not (loss < 2.2)", [1, 2, 3, 4]),  # a missing loss is not < 2.2
        ("~(loss < 2.2)", [1, 2, 3, 4]),  # what --holdout wrote before
        ("loss >= 2.2 and N < 1.5e9", [1, 4]),
        ("loss >= 2.2 & N < 1.5e9 | N == 1e8", [0, 1, 4]),
        ("loss < 2.1 or (N > 1e9 and loss > 2.9)", [0, 3]),
        ("role == 'teacher'", [0, 2]),
        ('role != "teacher"', [1, 4]),  # a missing role matches nothing
        ("`Model Size` >= 4", [3, 4]),
        ("loss > -1 and N >= .5e9", [1, 3, 4]),
        ("loss < N", [0, 1, 3, 4]),
    ],
)
def test_filter_selects_rows(text: str, rows: list[int]) -> None:
    mask = parse_filter(text).mask(RUNS)
    assert list(np.flatnonzero(mask.to_numpy())) == rows
    assert mask.index.equals(RUNS.index) and mask.dtype == bool


@pytest.mark.parametrize("text", ["loss >= 2.2", "loss >= 2.2 and N < 1.5e9", "~(loss < 2.2)"])
def test_filter_agrees_with_pandas_where_both_read_it(text: str) -> None:
    expected = RUNS.eval(text)
    assert parse_filter(text).mask(RUNS).tolist() == expected.tolist()


def test_holdout_is_the_complement() -> None:
    held = parse_filter("loss < 2.2").mask(RUNS)
    fitted = parse_filter(negated("loss < 2.2")).mask(RUNS)
    assert (fitted == ~held).all()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("@pd.read_pickle('x.pkl')", "cannot be read at '@pd.read_pic' (character 1)"),
        ("__import__('os').system('true')", 'cannot be read at ".system(\'tru" (character 17)'),
        ("loss.max() > 1", "cannot be read at '.max() > 1'"),
        ("loss >= 2.2; import os", "cannot be read at '; import os'"),
        ("loss >", "a column, number or quoted text was expected"),
        ("(loss > 1", "a '(' is not closed"),
        ("loss > 1)", "unexpected ')'"),
        ("1 < 2", "each comparison needs a column"),
        ("loss", "a comparison such as"),
        ("loss > - N", "'-' must be followed by a number"),
        ("loss > 1e400", "1e400, which is not a finite number"),
        ("", "is empty"),
        ("loss > 'x'", "compares text with a number"),
        ("role < 'z'", "orders text with <"),
        ("lss > 1", "names the column(s) lss, which the runs lack"),
    ],
)
def test_anything_else_is_refused_in_one_sentence(text: str, says: str) -> None:
    with pytest.raises(LawInputError) as caught:
        parse_filter(text, "--fit-where").mask(RUNS)
    message = str(caught.value)
    assert says in message and message.startswith(f"--fit-where {text!r}")
    assert "\n" not in message
