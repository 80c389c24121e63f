"""The way every request takes once a front has parsed it: open the upstream answer, relay it.

    front (parse, resolve)  ->  pivot request  ->  backend (wire request, errors mapped)  ->  relay  ->  client

`relay` is the only loop that moves upstream bytes to a client.
"""

from .relay import PREPARED, relay_json, relay_passthrough, relay_stream, stream_headers

__all__ = ["PREPARED", "relay_json", "relay_passthrough", "relay_stream", "stream_headers"]
