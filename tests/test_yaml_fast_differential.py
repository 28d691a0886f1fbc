"""Seeded random differential test: the fast YAML parses (_block_load, line by line; _plain_load,
from libyaml's events) give exactly what PyYAML gives, or hand the text on (_Unusual / _NeedMarks)."""

from __future__ import annotations

import math
import os
import random

import pytest
import yaml

from trigctl.config.yaml_loader import (
    _block_load,
    _fast_parse_applies,
    _NeedMarks,
    _plain_load,
    _UniqueKeyLoader,
    _Unusual,
)

KEYS = ["a", "b", "name", "on", "off", "y", "n", "yes", "no", "true", "null", "Null", "e", "_x",
        "k-1", "x_y", "inf", "nan", "TRUE", "On", "=", "<<", "1", "01", "'a'", '"b"', "a b", "a:b",
        "-a", "~", "a#b"]
SCALARS = ["1", "-1", "0", "01", "07", "08", "0o17", "0x1F", "0b101", "1_000", "1:30", "190:20:30.15",
           "1.5", ".5", "-.inf", ".NaN", "1e5", "1.0e+5", "6.8523015e+5", "yes", "no", "on", "off", "y",
           "n", "True", "FALSE", "null", "~", "Null", "NULL", "2024-01-01", "2001-12-14t21:59:43.10-05:00",
           "2001-12-14 21:59:43.10 -5", "2002-12-14", "x", "hello world", "a  b", "http://h:80/p",
           "a:b", "a: b", "a:", "a #b", "a#b", "'q'", "'a: b'", "'it''s'", "''", '""', '"a #b"',
           '"x\\ty"', "'1'", '"1"', "-x", "-", "--x", "=", "@x", "!x", "!!str 1", "!!int 3", "&a x",
           "[1, 2]", "{a: 1}", "|", ">", "%x", "?x", ":x", "a, b", "a ", "a\t", "caf\u00e9", "x  ",
           ".inf", "+1", "+.5", "0.", "1_0.5", "-0", "a -b", "~x", "a/b.c", "\u00e9"]


def _doc(rng: random.Random) -> str:
    lines: list[str] = []

    def indent_step() -> int:
        return rng.choice([2, 2, 2, 4, 1, 3])

    def mapping(ind: int, depth: int, first_prefix: str | None = None) -> None:
        for i in range(rng.randint(1, 4)):
            key = rng.choice(KEYS[:20]) if rng.random() < 0.9 else rng.choice(KEYS)
            prefix = first_prefix if (i == 0 and first_prefix is not None) else " " * ind
            kind = rng.random()
            if depth < 3 and kind < 0.25:
                lines.append(f"{prefix}{key}:")
                mapping(ind + indent_step(), depth + 1)
            elif depth < 3 and kind < 0.45:
                lines.append(f"{prefix}{key}:")
                seq(ind + rng.choice([0, 0, 2, 4, 1]), depth + 1)
            elif kind < 0.52:
                lines.append(f"{prefix}{key}:" + rng.choice(["", " ", "  "]))
            else:
                lines.append(f"{prefix}{key}: {rng.choice(SCALARS)}")
            if rng.random() < 0.1:
                lines.append(" " * rng.randint(0, 7) + rng.choice(["# c", "#", "# a: b", ""]))

    def seq(ind: int, depth: int) -> None:
        for _ in range(rng.randint(1, 3)):
            if depth < 3 and rng.random() < 0.4:
                mapping(ind + 2, depth + 1, first_prefix=" " * ind + "- ")
            else:
                lines.append(" " * ind + "- " + rng.choice(SCALARS))

    mapping(0, 0)
    if rng.random() < 0.05:  # an odd line anywhere
        lines.insert(rng.randrange(len(lines) + 1), " " * rng.randint(0, 4) + rng.choice(SCALARS))
    text = "\n".join(lines)
    if rng.random() < 0.8:
        text += "\n"
    r = rng.random()
    if r < 0.03:
        text = text.replace("\n", "\r\n")
    elif r < 0.06:
        text = "\ufeff" + text
    elif r < 0.08:
        text = "---\n" + text
    return text


def _typed(v):  # == with the types: 1 == True == 1.0; NaN as its repr
    if isinstance(v, dict):
        return ("map", [(_typed(k), _typed(x)) for k, x in v.items()])
    if isinstance(v, list):
        return ("seq", [_typed(x) for x in v])
    if isinstance(v, float) and math.isnan(v):
        return (float, "nan")
    return (type(v), v)


def _outcome(load, text):
    try:
        return _typed(load(text))
    except _Unusual:
        return "unusual"
    except (_NeedMarks, yaml.YAMLError):
        return "error"


#: More seeds for a longer hunt: YAML_DIFF_SEEDS=60 python -m pytest tests/test_yaml_fast_differential.py
SEEDS = int(os.environ.get("YAML_DIFF_SEEDS", "3"))


@pytest.mark.parametrize("seed", range(SEEDS))
def test_the_fast_yaml_parses_agree_with_pyyaml_on_random_block_documents(seed):
    rng = random.Random(seed)
    read_itself = 0
    for _ in range(1000):
        text = _doc(rng)
        if not _fast_parse_applies(text):  # anchors, aliases, `<<`: only the careful parse reads them
            continue
        try:
            expected = _typed(yaml.load(text, Loader=_UniqueKeyLoader))  # noqa: S506 - a safe loader
        except Exception:  # noqa: BLE001 - the fast parses must not read it either
            expected = "error"
        for load in (_block_load, _plain_load):
            got = _outcome(load, text)
            if got == "unusual":
                continue
            if load is _block_load and got != "error":
                read_itself += 1
            assert got == expected, (load.__name__, text)
    assert read_itself > 100  # the generator does reach the line-by-line parse's own subset
