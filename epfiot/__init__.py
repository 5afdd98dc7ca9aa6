"""epfiot: a declarative manager for an edge host (libvirt VMs, USB devices, LwM2M things)."""

__version__ = "0.1.0"
