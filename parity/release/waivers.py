"""The waiver ledger (``parity/waivers.toml``): a tap pattern granted a looser tolerance, with a reason
and an expiry date; an expired waiver, or one no tap needs any more, fails the gate."""
from __future__ import annotations
import dataclasses
import datetime
import math
import fnmatch
import os
import tomllib
from typing import Optional

from bert_torch._io import InputFileError, read_text

from parity.release.context import ReleaseInputError
from parity.release.options import DEFAULT_WAIVERS  # noqa: F401  (declared with the --waivers flag)


@dataclasses.dataclass
class Waiver:
    id: str
    taps: str                 # fnmatch pattern over tap names
    check: str                # fnmatch pattern over check names
    atol: float
    rtol: float
    reason: str
    expires: datetime.date
    matched: list = dataclasses.field(default_factory=list)   # (check, tap, passes without the waiver)

    def expired(self, today: datetime.date) -> bool:
        return today > self.expires


def load_waivers(path: Optional[str]) -> list[Waiver]:
    """``[[waiver]]`` tables: id, taps, check (default "*"), atol, rtol, reason, expires (a TOML date)."""
    if not path or not os.path.exists(path):
        return []
    try:
        doc = tomllib.loads(read_text(path, "waiver ledger"))   # a regular file, bounded by its size
    except (InputFileError, tomllib.TOMLDecodeError) as e:
        raise ReleaseInputError(f"{path}: not a readable TOML waiver ledger ({e})") from None
    out = []
    tables = doc.get("waiver", [])
    if not isinstance(tables, list) or not all(isinstance(w, dict) for w in tables):
        raise ReleaseInputError(f"{path}: 'waiver' must be an array of tables ([[waiver]] sections), "
                                f"got {type(tables).__name__}")
    for i, w in enumerate(tables):
        where = f"{path}: waiver {w.get('id', i)!r}"
        for key in ("id", "taps", "atol", "rtol", "reason", "expires"):
            if key not in w:
                raise ReleaseInputError(f"{where}: missing field {key!r}")
        if not isinstance(w["expires"], datetime.date) or isinstance(w["expires"], datetime.datetime):
            raise ReleaseInputError(f"{where}: expires must be a TOML date (e.g. 2027-01-31), got {w['expires']!r}")
        # finite: an infinite (or NaN) tolerance would switch the check off rather than widen it
        if not all(isinstance(w[k], (int, float)) and not isinstance(w[k], bool) and math.isfinite(w[k])
                   and w[k] >= 0 for k in ("atol", "rtol")):
            raise ReleaseInputError(f"{where}: atol and rtol must be finite non-negative numbers")
        if not str(w["reason"]).strip():
            raise ReleaseInputError(f"{where}: a waiver needs a reason")
        unknown = set(w) - {"id", "taps", "check", "atol", "rtol", "reason", "expires", "issue"}
        if unknown:
            raise ReleaseInputError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        out.append(Waiver(str(w["id"]), str(w["taps"]), str(w.get("check", "*")), float(w["atol"]),
                          float(w["rtol"]), str(w["reason"]), w["expires"]))
    ids = [w.id for w in out]
    if len(set(ids)) != len(ids):
        raise ReleaseInputError(f"{path}: duplicate waiver id {next(i for i in ids if ids.count(i) > 1)!r}")
    return out


def waiver_status(waivers: list[Waiver], today: datetime.date, checks_run: list[str]) -> list[dict]:
    """One row per waiver: applied / expired / unneeded / not evaluated (its check did not run)."""
    rows = []
    for w in waivers:
        ran = [c for c in checks_run if fnmatch.fnmatchcase(c, w.check)]
        needed = [f"{c}:{t}" for c, t, ok in w.matched if not ok]
        if w.expired(today):
            status, fails = "expired", True
            why = f"expired on {w.expires.isoformat()}: fix the taps or renew it with a new reason"
        elif not ran:
            status, fails, why = "not evaluated", False, f"no check matching {w.check!r} ran"
        elif not needed:
            status, fails = "unneeded", True
            why = (f"no longer needed: all {len(w.matched)} matching taps pass without it; delete it"
                   if w.matched else f"matches no tap (pattern {w.taps!r}); delete it")
        else:
            status, fails, why = "applied", False, f"needed by {len(needed)} taps: {', '.join(needed[:5])}"
        rows.append({"id": w.id, "check": w.check, "taps": w.taps, "atol": w.atol, "rtol": w.rtol,
                     "reason": w.reason, "expires": w.expires.isoformat(), "status": status,
                     "fails_gate": fails, "detail": why, "needed_by": needed})
    return rows
