"""An HTTP handler served on 127.0.0.1 (a free port) from a daemon thread, for tests that need
a real server: ADD of URLs, git over HTTP, a registry token service."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Any


class LocalHTTPServer:
    """`url` is `http://127.0.0.1:<port>`; `close()` stops it (also as a context manager)."""

    def __init__(self, handler: Any, poll: float = 0.5) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(poll,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join()
        self.httpd.server_close()

    def __enter__(self) -> LocalHTTPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["LocalHTTPServer"]
