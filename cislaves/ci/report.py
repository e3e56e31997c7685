"""Reports: one Gerrit comment per buildset (change, patch set, trigger) once all its builds ended.

The builds' results are in builds.sqlite before anything here runs. When a buildset ends, the runner
calls `Reporter.submit(job_id)`: a row in the `reports` table (same database) records that the buildset
is owed a report. The reporter's thread then publishes each build's logs (cislaves.ci.publish), writes
the comment, sends it (over SSH with `gerrit review`, or REST), marks the row reported and sends the
email (cislaves.ci.email). Any failure (a publish, Gerrit down, a 5xx, SSH refused) leaves the row
pending with a later `next_try` (backoff doubling up to ci.report_backoff_max), so it is retried, also
by the next listener after a restart. A row is marked reported right after Gerrit accepted the comment
and never sent again: a buildset is commented on once (a crash in the instant between Gerrit's answer and
that write is the one window where a second comment can happen).

The same thread regenerates the status page whenever a build changes state (it compares a fingerprint
of the builds table once a second, so builds started by any process are seen) and expires old logs once
a day.

Text from Gerrit never reaches a shell: `gerrit review` is built as argv and every word is quoted once
with shlex.quote into the remote command string (cislaves.ci.stream.Gerrit.exec). paramiko sends that
string untouched and Gerrit's own command-line splitter (single/double quotes, backslash) is its only
reader; the "second level" of quoting Gerrit's documentation asks for is the one a local `ssh` command
line would strip, which we do not have.
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cislaves.ci import builds as store_mod
from cislaves.ci.pages import duration
from cislaves.ci.builds import Build, BuildStore
from cislaves.ci.settings import CISettings, GerritSettings, ci_settings, gerrit_settings, queue_path
from cislaves.errors import CislavesError, ConfigError, GerritError

log = logging.getLogger(__name__)
MAX_MESSAGE = 16 * 1024  # Gerrit's default change.commentSizeLimit (bytes)
CUT_NOTE = "(This comment was cut at 16 KB: every build's logs are on the log server.)"
PATCH_FAULTS = ("FAILURE", "TIMED_OUT")  # results that blame the change (a negative vote may follow)
GIVE_UP = 86400.0  # a report still failing after a day is given up (state "failed", shown by fab jobs)
STATUS_EVERY = 1.0  # seconds between looks at the builds table for the status page
EXPIRE_EVERY = 86400.0
REST_PREFIX = b")]}'"
SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    job_id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    error TEXT,
    urls TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    done REAL
);
"""
# states: pending (owed), reported (comment accepted), silent (ci.report false: published only),
# skipped (nothing to report: every build ABORTED), failed (given up after GIVE_UP)


@dataclass
class Report:
    job_id: int
    state: str
    attempts: int
    next_try: float
    error: str | None
    urls: dict[str, str]
    created: float
    done: float | None


def message(ci: CISettings, builds: list[Build], urls: dict[str, str]) -> str | None:
    """The comment for a buildset in OpenStack's third-party CI format (None: nothing to report).

    ABORTED builds are left out; NODE_FAILURE says it is the infrastructure's. Over 16 KB, whole build
    lines are dropped from the end and a note says so."""
    shown = [b for b in sorted(builds, key=lambda b: b.name) if b.result and b.result != "ABORTED"]
    if not shown:
        return None
    trigger = shown[0].trigger
    head = f"Build {'succeeded' if succeeded(shown) else 'failed'} ({trigger})."
    lines = []
    for build in shown:
        line = f"* {build.name} {urls.get(build.id) or build.log_dir or '-'} : {build.result}"
        if build.duration is not None:
            line += f" in {duration(build.duration)}"
        if build.result == "NODE_FAILURE":
            line += " (infrastructure failure, not the change's)"
        if not build.voting:
            line += " (non-voting)"
        lines.append(line)
    foot = f"\n\n{ci.name}, contact and documentation: {ci.wiki_url}" if ci.wiki_url else ""
    text = head + "\n\n" + "\n".join(lines) + foot
    if len(text.encode()) <= MAX_MESSAGE:
        return text
    room = MAX_MESSAGE - len((head + "\n\n" + "\n\n" + CUT_NOTE + foot).encode())
    kept: list[str] = []
    for line in lines:
        room -= len(line.encode()) + 1
        if room < 0:
            break
        kept.append(line)
    return head + "\n\n" + "\n".join(kept) + "\n\n" + CUT_NOTE + foot


def succeeded(builds: list[Build]) -> bool:
    """Every voting build that is reported succeeded."""
    return all(b.result == "SUCCESS" for b in builds if b.voting and b.result != "ABORTED")


def vote(ci: CISettings, builds: list[Build]) -> int | None:
    """The value for ci.label, or None for no vote. -1 only for a voting build the change failed
    (FAILURE, TIMED_OUT), never for infrastructure (NODE_FAILURE) or configuration (ERROR)."""
    voting = [b for b in builds if b.voting and b.result and b.result != "ABORTED"]
    if ci.vote == "none" or not voting:
        return None
    if all(b.result == "SUCCESS" for b in voting):
        return 1
    if ci.vote == "both" and any(b.result in PATCH_FAULTS for b in voting):
        return -1
    return None


def tag(trigger: str) -> str:
    return f"autogenerated:cislaves:{trigger}"


def send_ssh(gerrit: GerritSettings, build: Build, text: str, labels: dict[str, int]) -> None:
    """`gerrit review --project P --message M [--label L=N] --tag T CHANGE,PATCHSET` over the
    listener's SSH settings (same host-key pinning)."""
    from cislaves.ci.stream import Gerrit

    client = Gerrit(gerrit)
    try:
        client.review(build.change, build.patchset, text, labels, tag(build.trigger), project=build.project)
    finally:
        client.close()


def send_rest(gerrit: GerritSettings, build: Build, text: str, labels: dict[str, int],
              timeout: float = 60) -> dict:
    """POST /a/changes/<project>~<branch>~<Change-Id>/revisions/<revision>/review (HTTP basic auth);
    returns Gerrit's ReviewResult with the `)]}'` prefix removed. GerritError on any failure."""
    change_id = (build.event.get("change") or {}).get("id") if isinstance(build.event.get("change"), dict) else None
    q = lambda text: urllib.parse.quote(str(text), safe="")  # noqa: E731
    if change_id and build.project and build.branch:
        ident = f"{q(build.project)}~{q(build.branch)}~{q(change_id)}"
    else:  # no Change-Id in the event: the change number is as good an identifier
        ident = str(int(build.change))
    url = (f"{gerrit.http_url.rstrip('/')}/a/changes/{ident}/revisions/"
           f"{q(build.revision or build.patchset)}/review")
    body = {"message": text, "tag": tag(build.trigger)}
    if labels:
        body["labels"] = labels
    secret = gerrit.http_password.get_secret_value() if gerrit.http_password else ""
    auth = base64.b64encode(f"{gerrit.http_user}:{secret}".encode()).decode()
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json; charset=UTF-8",
                                              "Authorization": f"Basic {auth}", "User-Agent": "cislaves"})
    where = f"gerrit REST {gerrit.http_url}"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            raw = answer.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode(errors="replace").strip().splitlines()[:1]
        raise GerritError(f"{where}: review of {build.change},{build.patchset} answered HTTP {exc.code}"
                          + (f": {detail[0]}" if detail else "")) from None
    except (OSError, ValueError) as exc:
        raise GerritError(f"{where}: review of {build.change},{build.patchset} failed: {exc}") from None
    if raw.startswith(REST_PREFIX):
        raw = raw[len(REST_PREFIX):]
    try:
        result = json.loads(raw or b"{}")
    except ValueError:
        raise GerritError(f"{where}: review of {build.change},{build.patchset}: answer is not JSON") from None
    return result if isinstance(result, dict) else {}


def check(config) -> None:
    """One-line errors for report settings that need more than one key (before anything starts)."""
    ci = ci_settings(config)
    if ci.report == "rest":
        gerrit = gerrit_settings(config, need_connection=False)
        for key in ("http_url", "http_user", "http_password"):
            if not getattr(gerrit, key):
                raise ConfigError(f"{config.where}: gerrit.{key}: required by ci.report: rest")


class ReportStore:
    """The `reports` table of builds.sqlite (one connection per thread, like BuildStore)."""

    def __init__(self, store: BuildStore):
        self.store, self.db = store, store.db
        self.db.executescript(SCHEMA)

    def owe(self, job_id: int) -> bool:
        """Record that `job_id`'s buildset is owed a report; False if it already was (or was reported)."""
        now = time.time()
        with self.store.lock:
            return self.db.execute("INSERT OR IGNORE INTO reports (job_id, state, next_try, created) "
                                   "VALUES (?, 'pending', ?, ?)", (job_id, now, now)).rowcount == 1

    def due(self, now: float) -> list[Report]:
        rows = self.db.execute("SELECT * FROM reports WHERE state='pending' AND next_try<=? ORDER BY created",
                               (now,)).fetchall()
        return [_report(r) for r in rows]

    def get(self, job_id: int) -> Report | None:
        row = self.db.execute("SELECT * FROM reports WHERE job_id=?", (job_id,)).fetchone()
        return _report(row) if row else None

    def unreported(self) -> list[Report]:
        rows = self.db.execute("SELECT * FROM reports WHERE state IN ('pending', 'failed') ORDER BY created")
        return [_report(r) for r in rows.fetchall()]

    def next_due(self) -> float | None:
        row = self.db.execute("SELECT min(next_try) FROM reports WHERE state='pending'").fetchone()
        return row[0] if row else None

    def update(self, report: Report, **values) -> None:
        for key, value in values.items():
            setattr(report, key, value)
        if "urls" in values:
            values["urls"] = json.dumps(values["urls"])
        with self.store.lock:
            self.db.execute(f"UPDATE reports SET {','.join(f'{k}=?' for k in values)} WHERE job_id=?",
                            (*values.values(), report.job_id))

    def finish(self, report: Report, state: str, builds: list[Build]) -> None:
        """Mark the report done and its builds reported, in one transaction."""
        with self.store.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("UPDATE reports SET state=?, done=?, error=NULL WHERE job_id=?",
                                (state, time.time(), report.job_id))
                for build in builds:
                    self.db.execute("UPDATE builds SET reported=1 WHERE id=?", (build.id,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        report.state = state


class ReporterThread:
    """What both reporters share (this module's Reporter, cislaves.coord.reports.ZKReporter): the report
    settings and the Publisher checked in the constructor, so their one-line errors come before any
    start; one background thread (`_loop`, woken early through `_wake`); and a stop that ends the thread,
    then the Publisher, so the shared SSH connection of an rsync target ends with the listener instead
    of CONTROL_PERSIST seconds later."""

    thread_name = "reporter"

    def __init__(self, config):
        check(config)
        self.config = config
        self.ci = ci_settings(config)
        self.gerrit = gerrit_settings(config, need_connection=self.ci.report == "ssh")
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        from cislaves.ci.publish import Publisher

        self.publisher = Publisher.from_config(config)
        self._fingerprint = None  # what the status page last showed
        self.sent = 0  # comments Gerrit accepted (tests, logs)

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.publisher.close()

    def _loop(self) -> None:
        raise NotImplementedError

    def _retry_in(self, attempts: int) -> float:
        """Seconds until a failed report is tried again after `attempts` failures: doubling from
        ci.report_backoff_first, at most ci.report_backoff_max."""
        return min(self.ci.report_backoff_max, self.ci.report_backoff_first * 2 ** min(attempts - 1, 30))

    def _comment(self, shown: list[Build], urls: dict[str, str], what: str) -> tuple[str, str | None]:
        """A buildset's one comment with its vote (none in silent mode): (its report's state, "reported"
        or "silent"; the message, for the email). `what` names the buildset in log lines."""
        text = message(self.ci, shown, urls)
        value = vote(self.ci, shown)
        first = shown[0]
        if self.ci.report is False:
            log.info("%s: published; not commented (ci.report: false)", what)
            return "silent", text
        labels = {self.ci.label: value} if value is not None else {}
        (send_rest if self.ci.report == "rest" else send_ssh)(self.gerrit, first, text, labels)
        self.sent += 1
        log.info("%s: reported on change %d patch set %d%s", what, first.change, first.patchset,
                 f" ({self.ci.label} {value:+d})" if value is not None else "")
        return "reported", text

    def _email(self, shown: list[Build], text: str | None, what: str) -> None:
        """The buildset's email, if ci.email is set (silent mode too); a failure never touches the report."""
        if self.ci.email is None:
            return
        from cislaves.ci import email

        try:  # email.send logs its own failures
            email.send(self.ci.email, self.ci, shown, text, succeeded(shown))
        except Exception:
            log.exception("%s: email", what)


class Reporter(ReporterThread):
    """The thread that owes Gerrit its comments (see the module docstring)."""

    thread_name = "ci-reporter"

    def __init__(self, config):
        super().__init__(config)
        self.path = store_mod.path_for(queue_path(config, self.ci))
        self._expired_at = 0.0
        self.passes = 0  # rounds of the thread over the owed reports

    def submit(self, job_id: int) -> None:
        """A buildset ended: owe it a report (durably) and wake the thread."""
        store = BuildStore(self.path)
        try:
            if ReportStore(store).owe(job_id):
                log.info("job %d: buildset ended; report owed", job_id)
        finally:
            store.close()
        self._wake.set()

    def changed(self) -> None:
        """A build changed state: regenerate the status page soon."""
        self._wake.set()

    # -- the thread
    def _loop(self) -> None:
        store = BuildStore(self.path)
        reports = ReportStore(store)
        try:
            pending = reports.unreported()
            if pending:
                log.info("%d report(s) owed from before; sending them", len(pending))
            while not self._stopping.is_set():
                self._wake.clear()
                for name, step in (("status page", lambda: self._status(store)),
                                   ("expiry", self._expire)):
                    try:
                        step()
                    except Exception as exc:  # never stops the reports
                        log.warning("%s: %s", name, exc if isinstance(exc, CislavesError) else
                                    f"{type(exc).__name__}: {exc}")
                for report in reports.due(time.time()):
                    if self._stopping.is_set():
                        break
                    self._attempt(store, reports, report)
                self.passes += 1
                wait = STATUS_EVERY
                due = reports.next_due()
                if due is not None:
                    wait = max(0.0, min(wait, due - time.time()))
                self._wake.wait(wait)
        finally:
            store.close()

    def _attempt(self, store: BuildStore, reports: ReportStore, report: Report) -> None:
        builds = list(store.latest(report.job_id).values())
        try:
            self._send(reports, report, builds)
        except Exception as exc:
            text = str(exc) if isinstance(exc, CislavesError) else f"{type(exc).__name__}: {exc}"
            attempts = report.attempts + 1
            if time.time() - report.created > GIVE_UP:
                reports.update(report, state="failed", attempts=attempts, error=text)
                log.error("job %d: report given up after %d attempts: %s", report.job_id, attempts, text)
                return
            delay = self._retry_in(attempts)
            reports.update(report, attempts=attempts, error=text, next_try=time.time() + delay)
            log.warning("job %d: report failed (attempt %d, again in %.0fs): %s", report.job_id, attempts,
                        delay, text)

    def _send(self, reports: ReportStore, report: Report, builds: list[Build]) -> None:
        shown = [b for b in builds if b.state == "finished" and b.result != "ABORTED"]
        if not shown:
            reports.finish(report, "skipped", builds)
            return
        urls = dict(report.urls)
        for build in shown:  # the report waits for the publish (a failure retries the whole report)
            if build.id not in urls and build.log_dir:
                urls[build.id] = self.publisher.publish_build(Path(build.log_dir))
                reports.update(report, urls=urls)
        what = f"job {report.job_id}"
        state, text = self._comment(shown, urls, what)
        reports.finish(report, state, builds)  # before the email: the comment is never sent twice
        self._email(shown, text, what)

    def _status(self, store: BuildStore) -> None:
        row = store.db.execute("SELECT count(*), max(created), max(started), max(finished), "
                               "sum(state='running') FROM builds").fetchone()
        if row == self._fingerprint:
            return
        self._fingerprint = row  # a failure is logged once, and retried at the next change
        self.publisher.publish_status(store.recent(200))

    def _expire(self) -> None:
        keep = getattr(self.ci.logs, "keep_days", 0)
        if not keep or time.time() - self._expired_at < EXPIRE_EVERY:
            return
        self._expired_at = time.time()
        self.publisher.expire(keep)


def unreported(config) -> list[str]:
    """For `fab jobs`: one line per buildset whose report is owed or was given up."""
    path = store_mod.path_for(queue_path(config, ci_settings(config)))
    if not path.exists():
        return []
    store = BuildStore(path)
    try:
        owed = ReportStore(store).unreported()
    finally:
        store.close()
    lines = []
    for report in owed:
        when = "given up" if report.state == "failed" else (
            f"next try in {max(0, int(report.next_try - time.time()))}s" if report.attempts else "sending")
        lines.append(f"job {report.job_id}: not reported yet ({report.attempts} failed attempt(s), {when})"
                     + (f": {report.error}" if report.error else ""))
    return lines


def _report(row: tuple) -> Report:
    job_id, state, attempts, next_try, error, urls, created, done = row
    return Report(job_id, state, attempts, next_try, error, json.loads(urls or "{}"), created, done)
