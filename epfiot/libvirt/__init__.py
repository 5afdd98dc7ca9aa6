"""The libvirt driver: the only package that imports libvirt.

connection: opening connections, error mapping, the domain type. domain: domain XML (render and read back).
host: LibvirtHost, the epfiot.host.Host interface. network, storage, usb: networks, volumes, USB devices.
"""
