"""The listener's Prometheus endpoint (`ci.metrics.listen`, default 127.0.0.1:9464) and health check.

/metrics   read at each scrape: the queue and the builds from their SQLite databases (so the figures
           survive restarts and count builds any process ran) and the listener's in-memory counters
           (cislaves.ci.dispatcher.Stats, the stream's connections and stalls):
             cislaves_queue_jobs{state}                 queued jobs by state
             cislaves_builds_running                    builds running now
             cislaves_instances{cloud,purpose,state}    instances counted against ci.max_instances
             cislaves_builds_total{job,result}          finished builds
             cislaves_build_duration_seconds{job}       histogram, start to end of finished builds
             cislaves_event_to_start_seconds            histogram, Gerrit's event time to build start
             cislaves_reports_owed                      buildsets whose Gerrit report is not sent yet
             cislaves_stream_reconnects_total, cislaves_stream_stalls_total, cislaves_catchups_total,
             cislaves_events_total{type} ("other": lines no trigger wants, never decoded),
             cislaves_last_event_timestamp_seconds, cislaves_stream_up
/healthz   200 "ok", or 503 once the event stream has been down longer than ci.metrics.stream_down_after.
Histograms over the database cover the newest HISTORY builds (a scrape stays cheap on an old CI).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cislaves.ci import builds as store_mod
from cislaves.ci.settings import ci_settings, queue_path
from cislaves.errors import ConfigError

log = logging.getLogger(__name__)
HISTORY = 10000
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


def serve(config, service=None) -> "MetricsServer | None":
    """Start the endpoint if ci.metrics is set (None otherwise). ConfigError (one line) if the address
    cannot be bound. `service` is the running cislaves.ci.dispatcher.Service (its counters)."""
    ci = ci_settings(config)
    if ci.metrics is None:
        return None
    return MetricsServer(config, service).start()


class Collector:
    """A prometheus_client collector that reads everything at scrape time."""

    def __init__(self, config, service=None):
        ci = ci_settings(config)
        self.queue = queue_path(config, ci)
        self.builds = store_mod.path_for(self.queue)
        self.service = service

    def describe(self):
        return []  # collected at scrape time only (the registry must not call collect() when registering)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        queue = GaugeMetricFamily("cislaves_queue_jobs", "Queued jobs (one per accepted event) by state",
                                  labels=["state"])
        for state, n in _rows(self.queue, "SELECT state, count(*) FROM jobs GROUP BY state"):
            queue.add_metric([state], n)
        yield queue
        running = _rows(self.builds, "SELECT count(*) FROM builds WHERE state='running'")
        yield GaugeMetricFamily("cislaves_builds_running", "Builds running now",
                                value=running[0][0] if running else 0)
        instances = GaugeMetricFamily("cislaves_instances", "Instances counted against ci.max_instances",
                                      labels=["cloud", "purpose", "state"])
        for cloud, purpose, state, n in _rows(self.builds, "SELECT cloud, purpose, state, count(*) FROM slots "
                                                           "GROUP BY cloud, purpose, state"):
            instances.add_metric([cloud, purpose, state], n)
        yield instances
        totals = CounterMetricFamily("cislaves_builds", "Finished builds by job and result", labels=["job", "result"])
        for job, result, n in _rows(self.builds, "SELECT name, result, count(*) FROM builds WHERE "
                                                 "state='finished' GROUP BY name, result"):
            totals.add_metric([job, result or "-"], n)
        yield totals
        recent = _rows(self.builds, "SELECT name, started, finished, event FROM builds WHERE started IS NOT NULL "
                                    "ORDER BY created DESC LIMIT ?", (HISTORY,))
        durations: dict[str, list[float]] = {}
        latencies: list[float] = []
        for name, started, finished, event in recent:
            if finished is not None:
                durations.setdefault(name, []).append(finished - started)
            when = _event_time(event)
            if when is not None:
                latencies.append(max(0.0, started - when))
        hist = HistogramMetricFamily("cislaves_build_duration_seconds", "Build duration, start to end",
                                     labels=["job"])
        for name, values in sorted(durations.items()):
            hist.add_metric([name], _buckets(values, DURATION_BUCKETS), sum(values))
        yield hist
        latency = HistogramMetricFamily("cislaves_event_to_start_seconds",
                                        "From Gerrit's event time to the build's start")
        latency.add_metric([], _buckets(latencies, LATENCY_BUCKETS), sum(latencies))
        yield latency
        owed = _rows(self.builds, "SELECT count(*) FROM reports WHERE state='pending'")
        yield GaugeMetricFamily("cislaves_reports_owed", "Buildsets whose report is not sent yet",
                                value=owed[0][0] if owed else 0)
        yield from self._listener(CounterMetricFamily, GaugeMetricFamily)

    def _listener(self, Counter, Gauge):
        service = self.service
        if service is None:
            return
        stream, stats = service.stream, service.stats
        yield Counter("cislaves_stream_reconnects", "Event stream connections after the first",
                      value=max(0, stream.connections - 1))
        yield Counter("cislaves_stream_stalls", "Streams found stalled by the probe", value=stream.stalls)
        yield Counter("cislaves_catchups", "Catch-up queries answered", value=stats.catchups)
        events = Counter("cislaves_events", "Stream events by type", labels=["type"])
        for kind, n in sorted(dict(stats.by_type).items()):
            events.add_metric([kind], n)
        yield events
        yield Gauge("cislaves_last_event_timestamp_seconds", "Time of the newest event seen (Gerrit's clock)",
                    value=service._last_seen or 0)
        yield Gauge("cislaves_stream_up", "1 while the event stream flows", value=int(stream.down_since is None))


class MetricsServer:
    """/metrics and /healthz on ci.metrics.listen, served by a thread."""

    def __init__(self, config, service=None):
        from prometheus_client import CollectorRegistry

        self.settings = ci_settings(config).metrics
        self.service = service
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(config, service))
        self.httpd: ThreadingHTTPServer | None = None

    def start(self) -> "MetricsServer":
        host, port = self.settings.address
        try:
            self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:
            raise ConfigError(f"ci.metrics.listen: cannot listen on {self.settings.listen}: {exc.strerror}") from None
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, name="ci-metrics", daemon=True).start()
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def health(self) -> tuple[bool, str]:
        """(healthy, one line): unhealthy once the stream has been down longer than stream_down_after."""
        stream = getattr(self.service, "stream", None)
        if stream is None:
            return True, "ok (no stream)"
        if stream.down_since is None:
            return True, "ok: streaming"
        down = time.time() - stream.down_since
        if down > self.settings.stream_down_after:
            return False, f"event stream down for {down:.0f}s (limit {self.settings.stream_down_after:g}s)"
        return True, f"ok: stream down for {down:.0f}s, reconnecting"


def _handler(server: MetricsServer):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                status, kind, body = 200, CONTENT_TYPE_LATEST, generate_latest(server.registry)
            elif path == "/healthz":
                ok, line = server.health()
                status, kind, body = (200 if ok else 503), "text/plain; charset=utf-8", (line + "\n").encode()
            else:
                status, kind, body = 404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
            log.debug("metrics: " + format, *args)

    return Handler


def _rows(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of a read-only query on the table it names after FROM; [] while the database or that
    table does not exist yet (a listener that has run no build)."""
    if not Path(path).exists():
        return []
    table = sql.split(" FROM ", 1)[1].split()[0]
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone():
            return []
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _event_time(event: str) -> float | None:
    try:
        value = json.loads(event).get("eventCreatedOn")
        value = float(value)
    except (TypeError, ValueError, AttributeError):
        return None
    return value / 1000 if value > 1e11 else value  # Gerrit sends seconds; some captures milliseconds


def _buckets(values: list[float], bounds: tuple) -> list[tuple[str, float]]:
    out = [(str(float(b)), sum(1 for v in values if v <= b)) for b in bounds]
    return out + [("+Inf", len(values))]
