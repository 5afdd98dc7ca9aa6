"""LwM2M things over CoAP: the bootstrap server and its codecs.

* :mod:`epfiot.lwm2m.codec` and :mod:`epfiot.lwm2m.protocol`: TLV / SenML-JSON codecs, the
  Bootstrap-Request parser and the write plan. They do not import aiocoap.
* :mod:`epfiot.lwm2m.server`: the CoAP bootstrap server (aiocoap).

The registry the server reads and records status in is a model of its own, :mod:`epfiot.registry`.
"""
