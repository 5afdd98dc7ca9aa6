"""The host's rules for one apply: what the whole host imposes beyond the apply's own (owner, stack) scopes.

Several tenants share one host, and one apply plans only its own scopes; but an address range, a USB device
or an endpoint name is the host's, not a stack's. With HostRules given to make_plan, a plan also checks
what it adds against everything observed on the host, every tenant's, every stack's and what epfiot does
not manage:
- a network overlaps no other network that stays on the host (networks_check);
- a tenant's network lies inside the ranges the host configuration allows for tenants' networks;
- a USB device held by a domain outside the apply cannot be claimed (host_usb);
- an endpoint name registered by another owner or stack cannot be taken (things);
- each tenant stays within its quotas, counting all its stacks after the plan (quotas).

What a problem says of another's resource depends on who asks (`asker`): the administrator is told names;
a tenant is told its own names and only "another tenant" or "the host" of the rest, as epfiot.authz hides
other tenants' resources everywhere else.

Without rules (None), a plan checks only within its own apply, as on a host nobody shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from epfiot.addressing import IpNetwork, within_ranges
from epfiot.model import Ownership

if TYPE_CHECKING:
    from epfiot.hostconfig import Caller, HostConfig, Quotas


@dataclass(frozen=True)
class HostRules:
    """What the host configuration says, for the one asking.

    asker: the tenant asking, None for the administrator. tenants: every tenant's name (their networks must
    lie in network_ranges; an owner that is no tenant is the administrator's label). quotas: by tenant."""

    asker: str | None = None
    tenants: frozenset[str] = frozenset()
    network_ranges: tuple[IpNetwork, ...] = ()
    quotas: Mapping[str, Quotas] = field(default_factory=dict)

    @classmethod
    def of(cls, config: HostConfig, caller: Caller) -> HostRules:
        """The rules of `config` for `caller`."""
        return cls(
            caller.tenant,
            frozenset(config.tenants),
            config.network_ranges,
            {name: tenant.quotas for name, tenant in config.tenants.items()},
        )

    def allows_range(self, owner: str, network: IpNetwork) -> bool:
        """Whether `owner` may have a network on `network`: a tenant only inside the host's ranges."""
        return owner not in self.tenants or within_ranges(network, self.network_ranges)

    def sees(self, owner: str | None) -> bool:
        """Whether the asker may be told about a resource of `owner` (None: one epfiot does not manage)."""
        return self.asker is None or owner == self.asker

    def describe(self, kind: str, libvirt_object: str, ownership: Ownership | None) -> str:
        """Another's object as far as the asker may know it: "network 'bob.lan' (owner bob, stack edge)" to the
        administrator, "a network of another tenant" to a tenant."""
        owner = ownership.owner if ownership is not None else None
        if self.sees(owner):
            if ownership is None:
                return f"{kind} {libvirt_object!r} (not managed by epfiot)"
            return f"{kind} {libvirt_object!r} (owner {ownership.owner}, stack {ownership.stack})"
        if owner is not None and owner in self.tenants:
            return f"a {kind} of another tenant"
        return f"a {kind} of the host"
