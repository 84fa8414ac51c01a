"""The web edge's guards on their own: the token-guessing throttle and loopback Host names
(the refusals over real sockets are in test_web.py and test_attack.py)."""

from __future__ import annotations

from ganglion.interfaces.web_guard import Throttle, is_loopback_host


def test_throttle_delays_grow_to_the_cap_and_forget_old_addresses() -> None:
    throttle = Throttle(free=3, cap=10.0, max_addresses=2)
    delays = []
    for _ in range(10):
        delays.append(throttle.delay("a"))
        throttle.failed("a")
    assert delays == [0, 0, 0, 1, 2, 4, 8, 10, 10, 10]
    throttle.succeeded("a")
    assert throttle.delay("a") == 0
    for addr in ("a", "b", "c"):
        for _ in range(3):
            throttle.failed(addr)
    assert throttle.delay("a") == 0 and throttle.delay("c") == 1  # "a" was the oldest


def test_loopback_host_names() -> None:
    for ok in ("127.0.0.1", "127.0.0.1:8080", "localhost", "LOCALHOST:80", "[::1]:8080",
               "::1", "app.localhost:1", "127.1.2.3", "localhost."):
        assert is_loopback_host(ok), ok
    for bad in ("evil.example", "localhost.evil.example", "10.0.0.1:80", "[::2]", "0.0.0.0",
                "", "127.0.0.1.nip.io"):
        assert not is_loopback_host(bad), bad
