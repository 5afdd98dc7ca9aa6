"""LwM2M things over CoAP: the bootstrap server, the only package that imports aiocoap.

* :mod:`epfiot.lwm2m.server`: :class:`~epfiot.lwm2m.server.BootstrapServer`, its lifecycle;
* :mod:`epfiot.lwm2m.bootstrap` and :mod:`epfiot.lwm2m.exchange`: requests, exchanges and their outcome;
* :mod:`epfiot.lwm2m.protocol` and :mod:`epfiot.lwm2m.codec`: the Bootstrap-Request parser, the write plan,
  the TLV / SenML-JSON codecs (no CoAP there);
* :mod:`epfiot.lwm2m.aiocoap_compat`: everything that relies on aiocoap beyond its stable API.

The registry the server reads and records status in is a model of its own, :mod:`epfiot.registry`;
docs/architecture.md has the whole list.
"""
