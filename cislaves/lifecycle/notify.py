"""Tell people how a rebake went: an SMTP email and/or a webhook POST of the JSON report.

`when: failure` (default) sends only when a target failed; `always` after every rebake. A failed
notification is logged and returned as a line; it never changes the rebake's result. The SMTP
password comes from the environment variable the config names (never from the file, never logged).
"""
from __future__ import annotations

import json
import logging
import smtplib
import socket
import urllib.error
import urllib.request
from email.message import EmailMessage
from typing import Any

log = logging.getLogger(__name__)


def send(settings, report: dict[str, Any], summary: list[str], environ: dict[str, str]) -> list[str]:
    """Send what `settings` (lifecycle.settings.Notify, or None) asks for; one line per channel."""
    if settings is None:
        return []
    failed = report["failed"] > 0
    if settings.when == "failure" and not failed:
        return []
    lines = []
    if settings.recipients:
        lines.append(_email(settings, report, summary, environ))
    if settings.webhook:
        lines.append(_webhook(settings, report))
    return lines


def subject(report: dict[str, Any]) -> str:
    state = "FAILED" if report["failed"] else "ok"
    return (f"cislaves rebake {report['id']} {state}: {report['succeeded']} succeeded, "
            f"{report['failed']} failed")


def _email(settings, report, summary, environ) -> str:
    smtp = settings.smtp
    msg = EmailMessage()
    msg["Subject"] = subject(report)
    msg["From"] = smtp.sender
    msg["To"] = ", ".join(settings.recipients)
    msg.set_content("\n".join(summary) + f"\n\nLog: {report.get('log')}\nReport: {report.get('report')}\n")
    msg.add_attachment(json.dumps(report, indent=2).encode(), maintype="application", subtype="json",
                       filename="rebake.json")
    try:
        smtp_send(msg, smtp.host, smtp.port, smtp.starttls, smtp.username,
                  environ.get(smtp.password_env, ""), smtp.timeout)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("notify: email to %s via %s:%s failed: %s", msg["To"], smtp.host, smtp.port, exc)
        return f"email to {msg['To']}: failed ({type(exc).__name__}: {exc})"
    return f"email to {msg['To']}: sent"


def smtp_send(msg: EmailMessage, host: str, port: int, starttls: bool, username: str | None,
              password: str, timeout: float, tls_context=None) -> None:
    """Send one message (STARTTLS and login when asked); raises OSError or SMTPException. Shared with
    the CI's reports (cislaves.ci.email)."""
    with smtplib.SMTP(host, port, timeout=timeout) as client:
        if starttls:
            client.starttls(context=tls_context)
        if username:
            client.login(username, password)
        client.send_message(msg)


def _webhook(settings, report) -> str:
    body = json.dumps({"text": subject(report), "report": report}).encode()
    request = urllib.request.Request(settings.webhook, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "cislaves-rebake"})
    shown = settings.webhook.split("?", 1)[0]  # a token in the query string is a secret
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:
        log.warning("notify: webhook %s answered %s", shown, exc.code)
        return f"webhook {shown}: failed (HTTP {exc.code})"
    except (OSError, socket.timeout) as exc:
        log.warning("notify: webhook %s failed: %s", shown, exc)
        return f"webhook {shown}: failed ({exc})"
    return f"webhook {shown}: sent (HTTP {status})"
