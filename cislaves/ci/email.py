"""Email for a reported buildset: the comment's lines and links, over SMTP (STARTTLS, login).

`ci.email.when: failure` (default) mails only when the buildset did not succeed; `always` every time.
Sending goes through the rebakes' SMTP sender (cislaves.lifecycle.notify.smtp_send). A failure to send
is logged and returned, never raised: it changes neither the build nor the report. The password is a
SecretStr read only at login and never logged.
"""
from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage

from cislaves.lifecycle.notify import smtp_send

log = logging.getLogger(__name__)


def send(settings, ci, builds, text: str, succeeded: bool) -> str | None:
    """Mail the report `text` for `builds` if settings.when asks; a line saying what happened."""
    if settings.when == "failure" and succeeded:
        return None
    first = builds[0]
    msg = EmailMessage()
    state = "succeeded" if succeeded else "FAILED"
    msg["Subject"] = (f"{ci.name}: {state}: change {first.change} patch set {first.patchset} "
                      f"({first.trigger}, {first.project or '-'})")
    msg["From"] = settings.sender
    msg["To"] = ", ".join(settings.to)
    msg.set_content(text + "\n", cte="7bit" if text.isascii() else "quoted-printable")  # links kept whole
    password = settings.password.get_secret_value() if settings.password else ""
    try:
        context = None
        if settings.starttls:
            context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
            if settings.ca_file:  # the system's too
                context.load_default_certs()
        smtp_send(msg, settings.host, settings.port, settings.starttls, settings.user, password,
                  settings.timeout, tls_context=context)
    except (OSError, smtplib.SMTPException, ssl.SSLError, ValueError) as exc:
        log.warning("email to %s via %s:%s failed: %s", msg["To"], settings.host, settings.port,
                    type(exc).__name__ if isinstance(exc, smtplib.SMTPAuthenticationError) else exc)
        return f"email to {msg['To']}: failed"
    log.info("email to %s sent (change %d patch set %d)", msg["To"], first.change, first.patchset)
    return f"email to {msg['To']}: sent"
