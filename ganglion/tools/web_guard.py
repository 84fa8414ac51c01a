"""Where web_fetch may connect: public addresses on sensible ports, and what allow_private lists.

Place in the flow: ``web_fetch`` checks every hop's URL here (scheme, port, an IP written in
the URL), and the HTTP session it uses resolves names through ``GuardedResolver``, which drops
every refused address a name resolves to. aiohttp connects only to what the resolver
returned (or to an IP literal, checked before), so the check holds at connect time: a name
that resolved to a public address for a first look-up and to 127.0.0.1 for the connection
(DNS rebinding) is refused at the connection. No proxy from the environment is used (an
HTTP proxy would make the connection, and its own look-up, out of our sight).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from ganglion.errors import BadArguments, ToolError

IPAddress = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

SCHEMES = ("http", "https")
STANDARD_PORTS = (80, 443)
FIRST_FREE_PORT = 1024
"""Ports 80 and 443, and 1024 and above (web servers on 8080, 3000, 8443 ...); the other
well-known ports belong to other protocols (SMTP 25, SSH 22, ...), which an HTTP request
must not be aimed at."""

# Named ranges, most specific first: the first match names the rule in the refusal.
_V4_RULES: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("127.0.0.0/8", "loopback (this machine)"),
    ("169.254.169.254/32", "link-local: the cloud metadata service"),
    ("169.254.0.0/16", "link-local"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared (carrier-grade NAT, RFC 6598)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
    ("192.0.2.0/24", "reserved (documentation)"),
    ("198.51.100.0/24", "reserved (documentation)"),
    ("203.0.113.0/24", "reserved (documentation)"),
    ("192.88.99.0/24", "reserved (6to4 relay)"),
    ("198.18.0.0/15", "reserved (benchmarking)"),
)
_V6_RULES: tuple[tuple[str, str], ...] = (
    ("::/128", "unspecified (::)"),
    ("::1/128", "loopback (this machine)"),
    ("fd00:ec2::254/128", "private: the cloud metadata service"),
    ("fe80::/10", "link-local"),
    ("fc00::/7", "private (unique local, fc00::/7)"),
    ("fec0::/10", "private (site-local)"),
    ("ff00::/8", "multicast"),
    ("64:ff9b:1::/48", "reserved (local NAT64)"),
    ("100::/64", "reserved (discard)"),
    ("2001::/32", "reserved (Teredo)"),
    ("2001:db8::/32", "reserved (documentation)"),
)
_RULES: tuple[tuple[Network, str], ...] = tuple(
    (ip_network(net), name) for net, name in (*_V4_RULES, *_V6_RULES))

_MAPPED = ip_network("::ffff:0:0/96")
_COMPATIBLE = ip_network("::/96")
_NAT64 = ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ip_network("2002::/16")


def embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, compatible, NAT64, 6to4), if any."""
    if ip in _MAPPED or ip in _NAT64 or (ip in _COMPATIBLE and int(ip) > 1):
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
    return None


def special_range(ip: IPAddress) -> str | None:
    """The kind of non-public address ``ip`` is ("loopback (this machine)"), or None."""
    if isinstance(ip, IPv6Address):
        if ip.scope_id:
            ip = IPv6Address(str(ip).split("%", 1)[0])
        inner = embedded_ipv4(ip)
        if inner is not None:
            kind = special_range(inner)
            return f"{kind}, written as IPv6" if kind else None
    for net, name in _RULES:
        if ip.version == net.version and ip in net:
            return name
    if not ip.is_global or ip.is_multicast:
        return "reserved (special-purpose)"
    return None


def _parse_ip(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def host_key(host: str) -> str:
    """A host name as allow_private compares it: lower case, no trailing dot."""
    return host.lower().rstrip(".")


class AddressGuard:
    """The rule for one config: refuse non-public addresses but what ``allow_private`` lists
    (address ranges, and host names whose every address is allowed)."""

    def __init__(self, allow_private: Iterable[str] = ()) -> None:
        self.networks: list[Network] = []
        self.hosts: set[str] = set()
        for entry in allow_private:
            try:
                self.networks.append(ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(host_key(entry))

    def refusal(self, host: str, ip: IPAddress) -> str | None:
        """Why ``host`` may not be reached at ``ip`` (the rule's name), or None."""
        kind = special_range(ip)
        if kind is None or host_key(host) in self.hosts:
            return None
        inner = embedded_ipv4(ip) if isinstance(ip, IPv6Address) else None
        if any(a.version == n.version and a in n
               for n in self.networks for a in (ip, inner) if a is not None):
            return None
        return kind

    def check_url(self, url: URL) -> None:
        """Refuse a URL web_fetch must not request: scheme, port, an IP literal's range."""
        if url.scheme not in SCHEMES:
            shown = f"{url.scheme}:" if url.scheme else "a URL without a scheme"
            raise BadArguments(f"only http:// and https:// URLs can be fetched, not {shown}")
        host = url.raw_host
        if not host:
            raise BadArguments(f"{url} has no host name")
        port = url.port
        if port is None or (port not in STANDARD_PORTS and port < FIRST_FREE_PORT):
            raise ToolError(f"refused: port {port} of {host} is kept for other protocols; "
                            "web_fetch uses ports 80, 443 and 1024 and above")
        ip = _parse_ip(host)
        if ip is not None and (kind := self.refusal(host, ip)) is not None:
            raise ToolError(refused_text(host, [(str(ip), kind)]))


def refused_text(host: str, refused: list[tuple[str, str]]) -> str:
    """The refusal for the model, naming each address and its rule."""
    addresses = "; ".join(f"{ip} is {kind}" for ip, kind in refused[:4])
    where = "" if _parse_ip(host) is not None else f"{host} resolves to: "
    return (f"refused: {where}{addresses}. web_fetch reaches only public addresses; the user "
            "can allow a private one with tools.web.allow_private")


class AddressRefused(OSError):
    """Every address a name resolved to is refused; the message says which rule."""


class GuardedResolver(AbstractResolver):
    """aiohttp's threaded resolver, keeping only the addresses the guard allows."""

    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard
        self.inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        refused: list[tuple[str, str]] = []
        for result in results:
            ip = _parse_ip(result["host"])
            kind = "not an address" if ip is None else self.guard.refusal(host, ip)
            if kind is None:
                kept.append(result)
            else:
                refused.append((result["host"], kind))
        if not kept:
            raise AddressRefused(refused_text(host, refused))
        return kept

    async def close(self) -> None:
        await self.inner.close()
