"""The libvirt driver: the only package that imports libvirt, and nothing above it (planner, apply, cli...).

host: LibvirtHost, the epfiot.host.Host interface, wiring the modules below. facts: reading what the host
is (domains, with their parse cache, and everything observe returns); actions: what is done to domains.
domain: domain XML (rendering, and the model it is read back with); network, storage, usb: networks,
volumes, USB devices. xmlmodel: libvirt's XML read as objects with XPath properties; metadata: epfiot's
ownership element and the templates; connection: connections, errors, the domain type; events: lifecycle
events.
"""
