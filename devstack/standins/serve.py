"""The one way every stand-in serves: threads, 127.0.0.1 only, a clean stop on SIGTERM.

The stand-ins run as scripts (``python devstack/standins/<name>.py``), so they import this
module by its bare name: the script's folder is first on ``sys.path``.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietServer(ThreadingHTTPServer):
    # Threads are daemons so a stuck request (e.g. a hang fault) cannot delay
    # exit; clients that hang up early are expected in tests, so no traceback.
    daemon_threads = True

    def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def serve(
    handler: type[BaseHTTPRequestHandler],
    port: int,
    banner: str,
    on_close: Callable[[], None] | None = None,
) -> int:
    """Serve ``handler`` on 127.0.0.1:``port`` until SIGTERM or Ctrl-C."""
    # TCP_NODELAY, as real servers set it: headers and body go out as separate writes, and
    # with Nagle's algorithm the body would wait for the client's delayed ACK (~40 ms a
    # request), a latency no real service of the stack has.
    handler.disable_nagle_algorithm = True
    server = QuietServer(("127.0.0.1", port), handler)
    # serve_forever() must be stopped from another thread.
    signal.signal(
        signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start()
    )
    print(f"{banner} on 127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if on_close is not None:
            on_close()
    return 0
