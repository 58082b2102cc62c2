"""age encryption as streams: constant memory whatever the object's size.

``pyrage.encrypt_io(reader, writer, ...)`` pushes ciphertext into a writer, while minio's
``put_object`` pulls from a reader; :class:`EncryptingReader` joins the two with a pipe
and a thread (pyrage reads 8 KiB at a time and writes 64 KiB chunks, so memory stays
flat). The output is standard age (``age-encryption.org/v1``): ``age -d -i key.txt``
opens it without this software. :class:`HashingReader` counts and hashes what passes
through, on either side of the encryption.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pyrage.x25519 import Identity, Recipient

__all__ = ["DecryptionFailed", "EncryptingReader", "HashingReader", "decrypt_stream"]


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class DecryptionFailed(Exception):
    """The ciphertext did not open: wrong key, damaged or truncated."""


class HashingReader:
    """A reader that hashes (sha256) and counts the bytes read through it."""

    def __init__(self, source: _Readable) -> None:
        self._source = source
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._source.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class _CountingWriter:
    """pyrage's writer must return the count of bytes written."""

    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        self._sink.flush()


class EncryptingReader:
    """The age encryption of ``source`` to ``recipients``, read as a stream.

    A failure of the source or of the encryption is raised by the ``read`` that meets
    the end of the stream, so an upload never completes with a truncated object.
    """

    def __init__(self, source: _Readable, recipients: list[Recipient]) -> None:
        import pyrage

        def produce(writer: _CountingWriter) -> None:
            pyrage.encrypt_io(source, writer, recipients)

        self._run(produce)

    def _run(self, produce: Callable[[_CountingWriter], None]) -> None:
        read_fd, write_fd = os.pipe()
        self._reader = os.fdopen(read_fd, "rb")
        self._writer = os.fdopen(write_fd, "wb")
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._produce, args=(produce,), daemon=True)
        self._thread.start()

    def _produce(self, produce: Callable[[_CountingWriter], None]) -> None:
        try:
            produce(_CountingWriter(self._writer))
            self._writer.flush()
        except BaseException as exc:  # pyo3's PanicException is not an Exception
            self._error = exc
        finally:
            with contextlib.suppress(OSError):  # the reader went away first
                self._writer.close()

    def read(self, n: int = -1, /) -> bytes:
        data = self._reader.read(n)
        if n is None or n < 0 or len(data) < n:  # the end: the producer has finished
            self._thread.join()
            if self._error is not None:
                raise self._error
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._reader.close()  # a producer blocked on a full pipe gets EPIPE and ends
        self._thread.join()

    def __enter__(self) -> EncryptingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decrypt_stream(source: _Readable, sink: IO[bytes], identities: list[Identity]) -> None:
    """Decrypt ``source`` into ``sink``; :class:`DecryptionFailed` saying why if it cannot.

    On failure ``sink`` may hold the chunks before the bad one: callers write into a
    place that only counts once the whole object checked out.
    """
    import pyrage

    try:
        pyrage.decrypt_io(source, _CountingWriter(sink), identities)
    except pyrage.DecryptError as exc:
        raise DecryptionFailed(str(exc) or "no identity opens it") from None
    except OSError as exc:
        if exc.errno is not None:  # a real I/O error of the source or sink, not the cipher
            raise
        raise DecryptionFailed(
            "the ciphertext is damaged or truncated (a chunk failed its authentication)"
        ) from None
