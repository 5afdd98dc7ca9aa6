"""FaultyHost: a real Host (the libvirt test driver) with failures a test chooses, at the Host interface.

The errors a real host gives only now and then (the daemon restarting, another job holding a domain's
lock) or that no manifest can provoke on the test driver cannot be had on demand; reconcile and watch
must still treat each kind rightly. FaultyHost passes every call through to the real host, except the
calls set up with `fail` (they raise the given error, without calling the host) or `ignore` (they return
without doing anything: a host that claims success it did not achieve). It never fakes what it reads:
observe() is always the real host's. It opens its real host when first used, and again after `close`
(watch closes its connection after a failed action), keeping the faults set up.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from epfiot.host import Host


def _subject(args: tuple[Any, ...]) -> str | None:
    """The libvirt name a Host call is about: its first argument, or that spec's libvirt name."""
    if not args:
        return None
    first = args[0]
    return first if isinstance(first, str) else getattr(first, "libvirt_name", None)


class FaultyHost:
    def __init__(self, open_host: Callable[[], Host]) -> None:
        self._open = open_host
        self._inner: Host | None = None
        self.calls: Counter[tuple[str, str | None]] = Counter()  # (method, libvirt name) -> calls
        self._faults: dict[tuple[str, str], BaseException | None] = {}

    @property
    def inner(self) -> Host:
        if self._inner is None:
            self._inner = self._open()
        return self._inner

    @property
    def uri(self) -> str:
        return self.inner.uri

    def close(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()

    def fail(self, method: str, name: str, error: BaseException) -> None:
        """Calls of `method` about `name` raise `error` until `heal`."""
        self._faults[(method, name)] = error

    def ignore(self, method: str, name: str) -> None:
        """Calls of `method` about `name` do nothing and return None, until `heal`."""
        self._faults[(method, name)] = None

    def heal(self, method: str, name: str) -> None:
        self._faults.pop((method, name), None)

    def __getattr__(self, method: str) -> Any:
        real = getattr(self.inner, method)
        if method == "observe" or not callable(real):
            return real
        return self._wrap(method, real)

    def _wrap(self, method: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            name = _subject(args)
            self.calls[(method, name)] += 1
            if name is not None and (method, name) in self._faults:
                error = self._faults[(method, name)]
                if error is None:
                    return None
                raise error
            return real(*args, **kwargs)

        return call
