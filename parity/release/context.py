"""What every release check receives (``Context``) and is (``Check``), and the two ways a check ends
other than with a section: bad input (exit 2) and "cannot run here" (listed, not failed)."""
from __future__ import annotations
import dataclasses
import datetime
from typing import TYPE_CHECKING, Callable, Optional

from parity.numerics.metrics import Profile
from parity.numerics.precision import Tier

if TYPE_CHECKING:
    from parity.candidates.spec import CandidateSpec


class ReleaseInputError(ValueError):
    """Bad input to the release gate (ledger, baseline, data dir): one line, exit 2."""


class NotRun(Exception):
    """Raised by a check that cannot run here (e.g. no data set): listed under checks_not_run, not failed."""


@dataclasses.dataclass
class Context:
    report_dir: str
    work_dir: str
    data_dir: Optional[str]
    profile: Profile
    waivers: list                # parity.release.waivers.Waiver (which raises ReleaseInputError from here)
    today: datetime.date
    pytest_args: list[str]
    files: dict = dataclasses.field(default_factory=dict)     # label -> path, hashed into the provenance
    seeds: dict = dataclasses.field(default_factory=dict)
    worst: dict = dataclasses.field(default_factory=dict)     # check -> (tap, |c - r| of its worst tap)
    tier: Tier = dataclasses.field(default_factory=Tier)       # the candidate's precision (--precision)
    require_data: bool = False   # --require-data / PARITY_REQUIRE_DATA=1 (CI): a check without its data fails
    candidate: Optional["CandidateSpec"] = None   # --candidate: the model the primary (MiniLM) check proves


@dataclasses.dataclass
class Check:
    name: str
    run: Callable[[Context], dict]
    what: str
    requires: Optional[str] = None   # a module that must import for the check to run here
