"""The shared L7 engine: HTTP/1.1 codec, routing, balancing, and the shells around them.

Pure cores (no trio): ``events``, ``errors`` (by blame, with status and ``x-mesh-reason``),
``h1`` (the strict codec, both roles), ``balance`` (round robin, P2C least-request),
``proxyheaders`` (RFC 9110 proxy semantics), ``decision`` (what a router returns: the
interface between the route model and the data path). Shells: ``pool`` and ``client``
(upstream connections), ``forward`` (one proxied exchange), ``server`` (the accept loop and
the connection loop), ``reactor`` (the epoll loop that drives connections inside trio).
"""
