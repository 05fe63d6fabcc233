"""Outgoing mail. Kianax writes to an outbox in the acting transaction; a job sends it."""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("kianax.mail")


class MailSender(Protocol):
    async def send(self, to: str, subject: str, body: str) -> None: ...


class LogMailSender:
    """Development: the message, link included, goes to the log so a person can follow it."""

    async def send(self, to: str, subject: str, body: str) -> None:
        log.info("email to %s: %s\n%s", to, subject, body, extra={"to": to, "subject": subject})
