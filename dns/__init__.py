"""Cluster DNS per the Kubernetes DNS specification (schema 1.1.0).

Theory of operation. A DnsConfig (translated from the store) is built once into a
:class:`~mesh.dns.zone.ZoneIndex`, a dict from lower-cased owner name to record sets (each
Service's share built once, dns/zone_parts.py; a name's records made when first asked). A query
goes bytes -> :mod:`~mesh.dns.packet` (parse, blame bad input) -> :mod:`~mesh.dns.responder`
(cluster name? answer from :mod:`~mesh.dns.answer`; other name? forward) -> bytes. All of that
is pure. :mod:`~mesh.dns.server` is the trio shell (sockets, config swaps, TCP connections,
metrics); :mod:`~mesh.dns.udp_server` holds its UDP loop, which answers repeated questions
straight from :mod:`~mesh.dns.wire_cache` and first-time cluster questions from
:mod:`~mesh.dns.fast_index`; forwarding goes through :mod:`~mesh.dns.upstream`, cached by
:mod:`~mesh.dns.forward_cache`.
"""
