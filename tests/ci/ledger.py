"""What a test published, and what the queue must hold for it: every matching event exactly once."""
from __future__ import annotations

import collections
import itertools

from cislaves.clouds.base import wait_for
from tests.ci.helpers import job_rows


def identity(job) -> tuple:
    """A job's event as the tests name it: (type, change, patch set, comment author or None)."""
    author = job.event.get("author") if job.event_type == "comment-added" else None
    return (job.event_type, job.change, job.patchset, author.get("username") if isinstance(author, dict) else None)


class Ledger:
    """Publishes events on the fake Gerrit in Gerrit 3.x's shape and remembers the ones that match the
    default trigger (new REWORK patch sets, rechecks); others (trivial rebases, review comments, votes)
    are published too and must not become jobs."""

    def __init__(self, gerrit, first_change: int = 10_000):
        self.gerrit = gerrit
        self.expected: list[tuple] = []
        self.numbers = itertools.count(first_change)
        self.authors = itertools.count(1)
        self.changes: list[int] = []

    def upload(self, change: int | None = None, kind: str = "REWORK") -> int:
        change = next(self.numbers) if change is None else change
        event = self.gerrit.upload(change, kind=kind)
        if change not in self.changes:
            self.changes.append(change)
        if kind == "REWORK":
            self.expected.append(("patchset-created", change, event["patchSet"]["number"], None))
        return change

    def recheck(self, change: int, text: str = "recheck") -> None:
        """A recheck by a new author (two rechecks of one author within seconds are one event)."""
        author = f"dev{next(self.authors)}"
        ps = len(self.gerrit.changes[change]["patchSets"])
        self.gerrit.comment(change, ps, text, author=author)
        self.expected.append(("comment-added", change, ps, author))

    def noise(self, change: int) -> None:
        """Events that match nothing: a review with votes, a plain comment."""
        ps = len(self.gerrit.changes[change]["patchSets"])
        self.gerrit.comment(change, ps, "Looks good, one nit inline.", author="carol", votes={"Code-Review": 1})
        self.gerrit.comment(change, ps, "I am not sure about the recheck logic here.", author="dave")

    def round(self, rechecks: int = 1) -> None:
        """A new change, a patch set 2 of an older change, a trivial rebase, rechecks and noise."""
        change = self.upload()
        self.noise(change)
        if len(self.changes) > 1:
            older = self.changes[-2]
            self.upload(older)
            self.upload(older, kind="TRIVIAL_REBASE")
        for i in range(rechecks):
            self.recheck(self.changes[-1 - i % len(self.changes)], "recheck" if i % 2 == 0 else "recheck acme-ci")

    def settle(self, config, service=None, timeout: float = 60) -> list:
        """Wait until every expected job is in the queue; return the jobs."""
        want = collections.Counter(self.expected)

        def complete():
            have = collections.Counter(identity(j) for j in job_rows(config))
            return all(have[k] >= n for k, n in want.items())
        wait_for(complete, f"{len(self.expected)} expected jobs", timeout,
                 describe=lambda: f"missing {sorted((collections.Counter(self.expected) - collections.Counter(identity(j) for j in job_rows(config))).elements())[:10]}"
                                  + (f", {service.stats}" if service is not None else ""))
        return job_rows(config)

    def check(self, config) -> None:
        """Every expected event is exactly one job, and there is no other job."""
        have = collections.Counter(identity(j) for j in job_rows(config))
        want = collections.Counter(self.expected)
        doubled = {k: n for k, n in have.items() if n > 1}
        assert not doubled, f"events that became more than one job: {doubled}"
        assert have == want, f"missing {sorted((want - have).elements())}, unexpected {sorted((have - want).elements())}"
