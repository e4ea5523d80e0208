"""Slowing down password guessing on the login page and the password change form.

Failed logins are counted per username and client address in the cache
(Redis, shared by every web server process). After
``SIMDECK_LOGIN_FAILURES`` failures within ``SIMDECK_LOGIN_WINDOW_SECONDS``
that username is locked for that address for ``SIMDECK_LOGIN_LOCKOUT_SECONDS``;
a correct password does not open it early, so a guesser learns nothing from
trying. Counting per address as well as per name keeps one attacker from
locking a colleague out from everywhere; a cap per address across all names
(``SIMDECK_LOGIN_FAILURES_PER_ADDRESS``) stops spraying many names.

A wrong current password on the password change form is a guess at the same
secret (by someone holding a session), so it counts as a failed login.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

PREFIX = "login-throttle"


@dataclass(frozen=True)
class Lockout:
    seconds_left: int

    @property
    def _wait(self) -> str:
        minutes = max(1, math.ceil(self.seconds_left / 60))
        return f"{minutes} minute{'' if minutes == 1 else 's'}"

    @property
    def message(self) -> str:
        return (
            "Too many failed logins for this username from your address. "
            f"Logging in is paused for {self._wait}; try again after that, "
            "or ask an administrator to reset your password."
        )

    @property
    def change_message(self) -> str:
        return (
            "Too many wrong current passwords for this account from your address. "
            f"Changing the password, and logging in, are paused for {self._wait}; "
            "try again after that, or ask an administrator to reset your password."
        )


def client_address(request: HttpRequest) -> str:
    """The client's address; behind a proxy, from the header the operator names."""
    header = settings.SIMDECK_CLIENT_IP_HEADER
    if header:
        forwarded = request.META.get(header, "")
        # The proxy appends the address it saw last: that one it vouches for.
        last = forwarded.split(",")[-1].strip()
        if last:
            return last
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def _key(kind: str, *parts: str) -> str:
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
    return f"{PREFIX}:{kind}:{digest}"


def _keys(username: str, address: str) -> tuple[str, str, str, str]:
    name = username.strip().lower()
    return (
        _key("fails", name, address),
        _key("locked", name, address),
        _key("fails-addr", address),
        _key("locked-addr", address),
    )


def lockout(username: str, address: str) -> Lockout | None:
    """The lockout in force for this username from this address, if any."""
    _, locked, _, locked_addr = _keys(username, address)
    until = max(cache.get(locked) or 0, cache.get(locked_addr) or 0)
    left = until - time.time()
    return Lockout(math.ceil(left)) if left > 0 else None


def _count(counter: str, lock: str, limit: int) -> Lockout | None:
    window = settings.SIMDECK_LOGIN_WINDOW_SECONDS
    cache.add(counter, 0, timeout=window)
    try:
        failures = cache.incr(counter)
    except ValueError:
        # The counter expired between add and incr: this failure starts a new window.
        cache.set(counter, 1, timeout=window)
        failures = 1
    if failures < limit:
        return None
    seconds = settings.SIMDECK_LOGIN_LOCKOUT_SECONDS
    cache.set(lock, time.time() + seconds, timeout=seconds)
    cache.delete(counter)
    return Lockout(seconds)


def record_failure(username: str, address: str) -> Lockout | None:
    """Count a failed login; returns the lockout it started, if it started one."""
    fails, locked, fails_addr, locked_addr = _keys(username, address)
    by_name = _count(fails, locked, settings.SIMDECK_LOGIN_FAILURES)
    by_address = _count(fails_addr, locked_addr, settings.SIMDECK_LOGIN_FAILURES_PER_ADDRESS)
    return by_name or by_address


def record_success(username: str, address: str) -> None:
    """A correct login forgets the failures before it."""
    fails, _, _, _ = _keys(username, address)
    cache.delete(fails)


def reset(username: str, address: str) -> None:
    """Lift a lockout (an administrator's ``manage.py`` or a test)."""
    cache.delete_many(list(_keys(username, address)))
