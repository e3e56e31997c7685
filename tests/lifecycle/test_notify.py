"""Notifications against real servers on 127.0.0.1: aiosmtpd and a local HTTP server. `when` decides,
a failing channel is a line (never an exception), the SMTP password comes from the environment and the
webhook's query string (often a token) is never shown."""
from __future__ import annotations

import json

from cislaves.lifecycle import notify
from cislaves.lifecycle.settings import Notify

REPORT = {"id": "20261202120000-abcdef", "succeeded": 1, "failed": 0, "targets": [], "log": "/x.log",
          "report": "/x.json"}


def test_failure_only_by_default_and_always_when_asked(smtp_server, webhook_server):
    settings = {"email": "ops@example.org", "webhook": webhook_server.url,
                "smtp": {"host": "127.0.0.1", "port": smtp_server.port}}
    sent_before = len(smtp_server.messages), len(webhook_server.posts)
    assert notify.send(Notify(**settings), REPORT, ["summary"], {}) == []
    assert (len(smtp_server.messages), len(webhook_server.posts)) == sent_before
    lines = notify.send(Notify(**settings, when="always"), REPORT, ["TARGET RESULT", "x ok"], {})
    assert lines == ["email to ops@example.org: sent",
                     f"webhook http://127.0.0.1:{webhook_server.server_address[1]}/hooks/ci: sent (HTTP 204)"]
    message = smtp_server.messages[-1]
    assert message["Subject"] == "cislaves rebake 20261202120000-abcdef ok: 1 succeeded, 0 failed"
    attachment = [p for p in message.walk() if p.get_filename() == "rebake.json"][0]
    assert json.loads(attachment.get_payload(decode=True)) == REPORT
    post = webhook_server.posts[-1]
    assert post["path"] == "/hooks/ci?token=s3cret" and post["body"]["report"] == REPORT


def test_an_unreachable_channel_is_a_line_not_an_error(webhook_server):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings = Notify(email=["a@example.org", "b@example.org"], webhook=f"http://127.0.0.1:{closed}/h?token=x",
                      smtp={"host": "127.0.0.1", "port": closed, "timeout": 5}, timeout=5)
    lines = notify.send(settings, {**REPORT, "failed": 1}, ["summary"], {})
    assert lines[0].startswith("email to a@example.org, b@example.org: failed (ConnectionRefusedError")
    assert lines[1].startswith(f"webhook http://127.0.0.1:{closed}/h: failed (") and "token" not in lines[1]
