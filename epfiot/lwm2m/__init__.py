"""LwM2M things: the bootstrap registry and the bootstrap server.

* :mod:`epfiot.lwm2m.registry`: the SQLite registry (desired config + bootstrap status) that
  reconcile, the planner and the CLI use. It does not import aiocoap.
* :mod:`epfiot.lwm2m.codec` and :mod:`epfiot.lwm2m.protocol`: TLV / SenML-JSON codecs, the
  Bootstrap-Request parser and the write plan. They do not import aiocoap either.
* :mod:`epfiot.lwm2m.server`: the CoAP bootstrap server (aiocoap), the only module that does.
"""
