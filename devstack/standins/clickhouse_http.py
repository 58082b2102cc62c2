"""Test stand-in: the ClickHouse HTTP interface in front of a real chdb engine.

Debian's clickhouse-server is too old for clickhouse-connect and has no BACKUP,
so tests run the real ClickHouse engine in-process through chdb and put this
thin HTTP front over it. Only the HTTP layer is imitated; every statement is
executed by the engine itself, so SQL behaviour (MergeTree, BACKUP/RESTORE to
S3, system tables) is real.

    python devstack/standins/clickhouse_http.py --port 18123 --data-dir /tmp/ch \
        --user default --password secret

The engine starts with the server's ``query_log`` configured, as a ClickHouse server
has it, so ``system.query_log`` is a real MergeTree table that grows with every query
run with ``log_queries = 1`` (langfuse#13123: system logs outgrowing the data).

Readiness: GET /ping -> "Ok.\\n". Stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.parser
import email.policy
import gzip
import hmac
import json
import os
import re
import sys
import tempfile
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, urlsplit

import chdb.session
from serve import serve

# URL arguments that steer the HTTP layer itself. Real ClickHouse treats every
# other URL argument as a query setting, and so do we (via SET, see Engine).
TRANSPORT_ARGS = {
    "query",
    "database",
    "query_id",
    "default_format",
    "user",
    "password",
    "session_id",
    "session_timeout",
    "session_check",
    "compress",
    "decompress",
    "wait_end_of_query",
    "enable_http_compression",
    "send_progress_in_http_headers",
    "http_headers_progress_interval_ms",
    "cancel_http_readonly_queries_on_client_close",
    "client_protocol_version",
    "buffer_size",
    "quota_key",
    "http_response_buffer_size",
    "add_http_cors_header",
    "http_wait_end_of_query",
}

# An INSERT whose data follows the statement in the request body. The data may
# be binary (Native, RowBinary), which chdb cannot take inside a SQL string, so
# such inserts are rewritten to INSERT ... FROM INFILE (what chdb supports).
INSERT_WITH_DATA = re.compile(
    rb"^\s*(INSERT\s+INTO\s+.+?)\s+FORMAT\s+([A-Za-z0-9_]+)[ \t]*(?:\r?\n)?",
    re.IGNORECASE | re.DOTALL,
)
# A trailing FORMAT clause decides the output format (the engine honours it).
TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
CODE_IN_MESSAGE = re.compile(r"Code:\s*(\d+)")
RESTORE_PARTS = re.compile(
    r"^(?P<head>\s*RESTORE\b.*?)(?P<mode>\s+(?:ASYNC|SYNC))?(?P<tail>\s+FORMAT\s+\w+)?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)


def restore_compat(sql: str) -> str:
    """chdb-only quirk: in chdb (clickhouse-local) the `default` database is an
    `Overlay` facade, whose backup records a bare `CREATE DATABASE default`.
    Restoring it (e.g. `RESTORE DATABASE default AS drill FROM S3(...)`) then
    fails with CANNOT_RESTORE_DATABASE (607) because the new database is Atomic.
    A real server's `default` is Atomic and restores fine, so the stand-in adds
    `allow_different_database_def=1` to RESTORE statements to behave like one.
    """
    m = RESTORE_PARTS.match(sql)
    if not m or "allow_different_database_def" in sql.lower():
        return sql
    head = m.group("head")
    if re.search(r"\bSETTINGS\b", head, re.IGNORECASE):
        head = re.sub(
            r"\bSETTINGS\b",
            "SETTINGS allow_different_database_def = 1,",
            head,
            count=1,
            flags=re.IGNORECASE,
        )
    else:
        head += " SETTINGS allow_different_database_def = 1"
    return head + (m.group("mode") or "") + (m.group("tail") or "")


# The system log a ClickHouse server keeps by default (its config.xml), with its defaults.
SERVER_CONFIG = """<clickhouse>
  <query_log>
    <database>system</database>
    <table>query_log</table>
    <partition_by>toYYYYMM(event_date)</partition_by>
    <flush_interval_milliseconds>7500</flush_interval_milliseconds>
  </query_log>
</clickhouse>
"""


class Engine:
    """One chdb session shared by all requests.

    chdb hosts one engine per process and its session objects are not
    thread-safe, so every call runs under a single lock. Long work does not
    need to hold it: BACKUP/RESTORE ... ASYNC return at once and the engine's
    own threads carry on, so system.backups stays pollable from other requests.
    """

    def __init__(self, path: str):
        config = f"{path.rstrip('/')}.config.xml"
        with open(config, "w", encoding="utf-8") as fh:
            fh.write(SERVER_CONFIG)
        self.session = chdb.session.Session(f"{path}?config-file={config}")
        self.lock = threading.Lock()
        with self.lock:
            self.version = self._scalar("SELECT version()")
            self.timezone = self._scalar("SELECT timezone()")

    def _scalar(self, sql: str) -> str:
        return self.session.query(sql, "TabSeparatedRaw").bytes().decode().strip()

    def execute(self, sql: str, fmt: str, params: dict, database: str | None, settings: dict):
        with self.lock:
            # HTTP requests are stateless in ClickHouse; the shared session is
            # not, so pin the database and the settings for this call only.
            self.session.query(f"USE {quote_ident(database or 'default')}", "TabSeparated")
            applied = []
            try:
                for key, value in settings.items():
                    self.session.query(f"SET {key} = {quote_value(value)}", "TabSeparated")
                    applied.append(key)
                return self.session.query(sql, fmt, params=params)
            finally:
                for key in applied:
                    with contextlib.suppress(Exception):
                        self.session.query(f"SET {key} = DEFAULT", "TabSeparated")

    def close(self):
        with self.lock, contextlib.suppress(Exception):
            self.session.close()


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_value(value: str) -> str:
    # Numbers go in bare so numeric settings parse; anything else as a string.
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClickHouseError(Exception):
    def __init__(self, code: int, message: str, status: int = 500):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def decompress(data: bytes, encoding: str | None) -> bytes:
    """Request bodies arrive compressed as clickhouse-connect negotiated
    (lz4 when the lz4 package is present, else gzip/deflate/zstd)."""
    encoding = (encoding or "").strip().lower()
    if not encoding or encoding == "identity":
        return data
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    if encoding == "zstd":
        try:
            from compression import zstd  # Python 3.14+
        except ImportError:
            from backports import zstd
        return zstd.decompress(data)
    if encoding == "br":
        import brotli

        return brotli.decompress(data)
    raise ClickHouseError(
        1,
        f"Code: 1. DB::Exception: Unknown Content-Encoding {encoding!r}. (UNSUPPORTED_METHOD)",
        400,
    )


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clickhouse-connect's urllib3 pool can keep connections open;
    # every response therefore carries Content-Length.
    protocol_version = "HTTP/1.1"
    server_version = "ClickHouseStandin"
    engine: Engine
    user: str
    password: str

    def log_message(self, fmt, *args):  # quiet: tests read stdout/stderr
        pass

    # --- plumbing -----------------------------------------------------

    def _read_body(self) -> bytes:
        # client.insert streams a generator, which urllib3 sends chunked.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, err: ClickHouseError, query_id: str = ""):
        body = err.message.rstrip()
        if "(version " not in body:
            body += f" (version {self.engine.version})"
        self._send(
            err.status,
            (body + "\n").encode(),
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(err.code),
                "X-ClickHouse-Query-Id": query_id,
            },
        )

    def _credentials(self, args: dict) -> tuple[str, str]:
        # Same precedence as ClickHouse: headers, basic auth, URL args; none = default user.
        if "X-ClickHouse-User" in self.headers:
            return self.headers["X-ClickHouse-User"], self.headers.get("X-ClickHouse-Key", "")
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
                return user, password
            except Exception:
                return "", "\0invalid"
        return args.get("user", "default"), args.get("password", "")

    # --- HTTP verbs ---------------------------------------------------

    def do_GET(self):
        self._handle(b"")

    def do_POST(self):
        self._handle(self._read_body())

    def _handle(self, body: bytes):
        url = urlsplit(self.path)
        if url.path in ("/ping", "/replicas_status"):
            return self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
        args = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = args.get("query_id") or str(uuid.uuid4())
        try:
            user, password = self._credentials(args)
            if not (
                hmac.compare_digest(user.encode(), self.user.encode())
                and hmac.compare_digest(password.encode(), self.password.encode())
            ):
                raise ClickHouseError(
                    516,
                    (
                        f"Code: 516. DB::Exception: {user}: Authentication failed: "
                        "password is incorrect, "
                        "or there is no user with such name. (AUTHENTICATION_FAILED)"
                    ),
                    401,
                )
            if url.path not in ("/", ""):
                raise ClickHouseError(
                    1,
                    f"Code: 1. DB::Exception: No handler for path {url.path}. (UNSUPPORTED_METHOD)",
                    404,
                )
            body = decompress(body, self.headers.get("Content-Encoding"))
            if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
                # Large bind parameters (and the query) travel as form fields.
                msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
                )
                for part in msg.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if name and not part.get_filename():
                        args[name] = (
                            part.get_content()
                            if part.get_content_maintype() == "text"
                            else part.get_payload(decode=True).decode()
                        )
                body = b""
            if "query" not in args and not body:
                return self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            self._run(args, body, query_id)
        except ClickHouseError as err:
            self._send_error(err, query_id)
        except Exception as exc:  # engine errors arrive as ChdbError/RuntimeError
            message = str(exc)
            match = CODE_IN_MESSAGE.search(message)
            code = int(match.group(1)) if match else 1000
            if not match:
                message = f"Code: 1000. DB::Exception: {message}. (POCO_EXCEPTION)"
            self._send_error(ClickHouseError(code, message), query_id)

    def _run(self, args: dict, body: bytes, query_id: str):
        # As in ClickHouse, the `query` argument and the body form one text.
        raw = args.get("query", "").encode()
        if raw and body:
            raw = raw + b"\n" + body
        elif body:
            raw = body
        params = {k[6:]: v for k, v in args.items() if k.startswith("param_")}
        settings = {
            k: v for k, v in args.items() if k not in TRANSPORT_ARGS and not k.startswith("param_")
        }
        for key in settings:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ClickHouseError(
                    115,
                    f"Code: 115. DB::Exception: Unknown setting '{key}'. (UNKNOWN_SETTING)",
                    400,
                )
        database = args.get("database") or None

        insert = INSERT_WITH_DATA.match(raw)
        if insert and insert.end() < len(raw):
            return self._insert(insert, raw[insert.end() :], params, database, settings, query_id)

        sql = restore_compat(raw.decode("utf-8"))
        explicit = TRAILING_FORMAT.search(sql)
        fmt = explicit.group(1) if explicit else args.get("default_format", "TabSeparated")
        # Real ClickHouse reports X-ClickHouse-Format for any statement that
        # yields a result set, even an empty one; clickhouse-connect's command()
        # relies on that. The engine gives no such signal, so for TSV output ask
        # for the names row: a result-producing statement always emits it, DDL
        # emits nothing. Then strip it again.
        probe = not explicit and fmt in ("TabSeparated", "TSV")
        started = time.monotonic()
        result = self.engine.execute(
            sql, "TabSeparatedWithNames" if probe else fmt, params, database, settings
        )
        out = result.bytes() or b""
        has_result = bool(out) or (explicit is not None and sql.lstrip()[:6].upper() != "INSERT")
        if probe and out:
            out = out[out.find(b"\n") + 1 :]
        headers = self._headers(query_id, started, result)
        if has_result:
            headers["X-ClickHouse-Format"] = fmt
            headers["Content-Type"] = (
                "application/octet-stream"
                if fmt.startswith(("Native", "RowBinary", "Arrow", "Parquet"))
                else "text/tab-separated-values; charset=UTF-8"
            )
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        self._send(200, out, headers)

    def _insert(self, insert, data: bytes, params, database, settings, query_id):
        head = insert.group(1).decode("utf-8")
        fmt = insert.group(2).decode()
        # INFILE goes before any SETTINGS clause of the INSERT.
        target, *rest = re.split(r"\bSETTINGS\b", head, maxsplit=1, flags=re.IGNORECASE)
        insert_settings = f"SETTINGS {rest[0]}" if rest else ""
        with tempfile.NamedTemporaryFile(suffix="." + fmt.lower(), delete=False) as tmp:
            tmp.write(data)
        try:
            path = tmp.name.replace("\\", "\\\\").replace("'", "\\'")
            sql = f"{target} FROM INFILE '{path}' {insert_settings} FORMAT {fmt}"
            started = time.monotonic()
            result = self.engine.execute(sql, "TabSeparated", params, database, settings)
        finally:
            os.unlink(tmp.name)
        headers = self._headers(query_id, started, result, written=True)
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        self._send(200, b"", headers)

    def _headers(self, query_id, started, result, written=False) -> dict:
        try:
            rows, size = result.rows_read(), result.bytes_read()
        except Exception:
            rows = size = 0
        summary = {
            "read_rows": str(0 if written else rows),
            "read_bytes": str(0 if written else size),
            "written_rows": str(rows if written else 0),
            "written_bytes": str(size if written else 0),
            "total_rows_to_read": "0",
            "result_rows": "0",
            "result_bytes": "0",
            "elapsed_ns": str(int((time.monotonic() - started) * 1e9)),
        }
        return {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.engine.timezone,
            "X-ClickHouse-Server-Display-Name": "clickhouse-standin",
            "X-ClickHouse-Summary": json.dumps(summary),
        }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data-dir", required=True, help="chdb session path; persists across restarts")
    ap.add_argument("--user", default="default")
    ap.add_argument("--password", default="")
    opts = ap.parse_args(argv)

    os.makedirs(opts.data_dir, exist_ok=True)
    engine = Engine(opts.data_dir)
    handler = type(
        "BoundHandler", (Handler,), {"engine": engine, "user": opts.user, "password": opts.password}
    )
    return serve(
        handler, opts.port, f"clickhouse stand-in (chdb {engine.version})", on_close=engine.close
    )


if __name__ == "__main__":
    sys.exit(main())
