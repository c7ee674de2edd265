"""Replace e-mail addresses and public IP addresses in kept text, as FineWeb does.

Private, loopback, link-local and documentation addresses (192.168.0.1, 127.0.0.1, 2001:db8::1)
identify nobody and are what technical documentation is full of, so they are kept; so are
addresses at reserved example domains.
"""

from __future__ import annotations

import ipaddress
import re
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as config_dataclass

from lmforge.tasks.data.steps.base import Document, Step

_EMAIL = re.compile(
    r"(?<![\w.+-])[\w.+-]+@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,63}\b", re.IGNORECASE
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?![\w:])", re.IGNORECASE)
# RFC 2606 / 6761 names reserved for examples.
_EXAMPLE_DOMAINS = re.compile(
    r"@(?:[\w-]+\.)*(?:example\.(?:com|net|org)|example|invalid|localhost|test)$", re.IGNORECASE
)


@config_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class PIIFormatter(Step):
    """A transforming step: `redact(text)` replaces e-mail addresses and globally routable IP addresses."""

    email_replacement: str = Field(
        "email@example.com", description="What an e-mail address is replaced with."
    )
    # TEST-NET-1 and 2001:db8::/32 are reserved for documentation: never a real host.
    ipv4_replacement: str = Field("192.0.2.1", description="What an IPv4 address is replaced with.")
    ipv6_replacement: str = Field(
        "2001:db8::1", description="What an IPv6 address is replaced with."
    )
    redact_emails: bool = Field(True, description="Replace e-mail addresses.")
    redact_ips: bool = Field(True, description="Replace globally routable IP addresses.")

    name = "pii"

    def apply(self, doc: Document) -> None:
        doc.text = self.redact(doc.text)

    def redact(self, text: str) -> str:
        if self.redact_emails and "@" in text:
            text = _EMAIL.sub(self._email, text)
        if self.redact_ips:
            text = _IPV4.sub(self._ip(self.ipv4_replacement), text)
            if ":" in text:
                text = _IPV6.sub(self._ip(self.ipv6_replacement), text)
        return text

    def _email(self, match: re.Match[str]) -> str:
        address = match.group(0)
        return address if _EXAMPLE_DOMAINS.search(address) else self.email_replacement

    @staticmethod
    def _ip(replacement: str):
        def replace(match: re.Match[str]) -> str:
            candidate = match.group(0)
            if ":" in candidate and candidate.count(":") < 3:
                return candidate  # C++ `a::b`, clock times: public IPv6 addresses have more groups
            try:
                address = ipaddress.ip_address(candidate)
            except ValueError:
                return candidate  # 999.1.2.3, version numbers: not addresses
            return replacement if address.is_global else candidate

        return replace
