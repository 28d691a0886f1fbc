"""render.iso (every timestamp `list --json` and `history --json` print) caches the whole second;
it must give what datetime's isoformat gives, to the millisecond, for any float the state holds."""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone

from trigctl.render import iso


def reference(ts):
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        return None


def test_iso_matches_isoformat():
    rng = random.Random(12)
    values = [rng.uniform(-1e10, 4e10) for _ in range(20000)]
    values += [rng.randint(1_700_000_000, 1_800_000_000) + rng.randint(0, 999_999) / 1e6 + rng.choice((0, 5e-7, -5e-7))
               for _ in range(20000)]
    values += [0.0, -0.0, 0.9999995, -0.0000005, 1764653206.9999996, 253402300799.9999, 253402300800.0,
               -62135596800.0, -62135596801.0, 1e20, -1e20, math.nan, math.inf, -math.inf]
    for v in values:
        assert iso(v) == reference(v), v
    assert iso(None) is None
