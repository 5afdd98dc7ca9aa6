"""The things registry: what reconcile wants each LwM2M endpoint to be bootstrapped with, and what the
bootstrap server recorded. A model, not protocol: SQLite and plain data, no CoAP.

* :mod:`epfiot.registry.things`: thing configurations (validated), records, statuses, status updates;
* :mod:`epfiot.registry.store`: the SQLite store (:class:`Registry`);
* :mod:`epfiot.registry.schema`: its table, migrations and row mapping;
* :mod:`epfiot.registry.paths`: LwM2M paths ("/3/0/14"), shared with the codecs of :mod:`epfiot.lwm2m`.
"""

from epfiot.registry.schema import SCHEMA_VERSION
from epfiot.registry.store import Registry
from epfiot.registry.things import (
    SECURITY_INSTANCE,
    SECURITY_MANAGED_RESOURCES,
    SERVER_MANAGED_RESOURCES,
    STATUS_BOOTSTRAPPED,
    STATUS_BOOTSTRAPPING,
    STATUS_FAILED,
    STATUS_PENDING,
    STATUS_TIMEOUT,
    STATUS_WAITING,
    STATUSES,
    BootstrapTarget,
    InvalidThingConfig,
    RegistryError,
    ResourceWrite,
    StatusUpdate,
    ThingConfig,
    ThingConflictError,
    ThingRecord,
    server_uri_for,
)

__all__ = [
    "SCHEMA_VERSION",
    "SECURITY_INSTANCE",
    "SECURITY_MANAGED_RESOURCES",
    "SERVER_MANAGED_RESOURCES",
    "STATUSES",
    "STATUS_BOOTSTRAPPED",
    "STATUS_BOOTSTRAPPING",
    "STATUS_FAILED",
    "STATUS_PENDING",
    "STATUS_TIMEOUT",
    "STATUS_WAITING",
    "BootstrapTarget",
    "InvalidThingConfig",
    "Registry",
    "RegistryError",
    "ResourceWrite",
    "StatusUpdate",
    "ThingConfig",
    "ThingConflictError",
    "ThingRecord",
    "server_uri_for",
]
