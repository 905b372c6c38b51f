"""The shared L7 engine: HTTP/1.1 codec, routing, balancing, and the shells around them."""
