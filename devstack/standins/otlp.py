"""OTLP trace export decoded into flat span dicts, for the Langfuse stand-in.

The langfuse SDK v4 (what LiteLLM >= 1.106 uses) exports spans over OTLP/HTTP, as
protobuf by default and as JSON when asked. Both encodings become the same list of
dicts: trace_id, span_id, parent_id (hex strings), name, start, end (Unix nanos) and
attributes (plain Python values).
"""

from __future__ import annotations

import struct

# --- minimal protobuf reader ------------------------------------------------
# The OTLP exporter in langfuse SDK v4 posts application/x-protobuf. Decoding
# the few messages we need by hand keeps the stand-in free of extra packages.


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def pb_fields(buf: bytes):
    """Yield (field_number, value) for one message; length-delimited values stay bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, value


def pb_any_value(buf: bytes):
    for field, value in pb_fields(buf):
        if field == 1:
            return value.decode("utf-8", "replace")
        if field == 2:
            return bool(value)
        if field == 3:
            return value - (1 << 64) if value >= 1 << 63 else value
        if field == 4:
            return struct.unpack("<d", value)[0]
        if field == 5:  # ArrayValue
            return [pb_any_value(v) for f, v in pb_fields(value) if f == 1]
        if field == 6:  # KeyValueList
            return dict(pb_key_value(v) for f, v in pb_fields(value) if f == 1)
        if field == 7:
            return value.hex()
    return None


def pb_key_value(buf: bytes) -> tuple[str, object]:
    key, value = "", None
    for field, raw in pb_fields(buf):
        if field == 1:
            key = raw.decode("utf-8", "replace")
        elif field == 2:
            value = pb_any_value(raw)
    return key, value


def otlp_spans_from_protobuf(body: bytes) -> list[dict]:
    """ExportTraceServiceRequest -> flat list of span dicts
    (trace_id, span_id, parent_id, name, start, end, attributes)."""
    spans = []
    for f1, resource_spans in pb_fields(body):
        if f1 != 1:
            continue
        for f2, scope_spans in pb_fields(resource_spans):
            if f2 != 2:
                continue
            for f3, span in pb_fields(scope_spans):
                if f3 != 2:
                    continue
                item = {
                    "trace_id": "",
                    "span_id": "",
                    "parent_id": "",
                    "name": "",
                    "start": 0,
                    "end": 0,
                    "attributes": {},
                }
                for field, value in pb_fields(span):
                    if field == 1:
                        item["trace_id"] = value.hex()
                    elif field == 2:
                        item["span_id"] = value.hex()
                    elif field == 4:
                        item["parent_id"] = value.hex()
                    elif field == 5:
                        item["name"] = value.decode("utf-8", "replace")
                    elif field == 7:
                        item["start"] = struct.unpack("<Q", value)[0]
                    elif field == 8:
                        item["end"] = struct.unpack("<Q", value)[0]
                    elif field == 9:
                        key, val = pb_key_value(value)
                        item["attributes"][key] = val
                spans.append(item)
    return spans


def _json_any_value(value: dict):
    if not isinstance(value, dict):
        return value
    for key in ("stringValue", "boolValue", "doubleValue", "bytesValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_json_any_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return {
            kv["key"]: _json_any_value(kv.get("value"))
            for kv in value["kvlistValue"].get("values", [])
        }
    return None


def otlp_spans_from_json(doc: dict) -> list[dict]:
    # OTLP/JSON encodes trace and span ids as hex strings.
    spans = []
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                spans.append(
                    {
                        "trace_id": str(span.get("traceId", "")).lower(),
                        "span_id": str(span.get("spanId", "")).lower(),
                        "parent_id": str(span.get("parentSpanId", "") or "").lower(),
                        "name": span.get("name", ""),
                        "start": int(span.get("startTimeUnixNano", 0) or 0),
                        "end": int(span.get("endTimeUnixNano", 0) or 0),
                        "attributes": {
                            a["key"]: _json_any_value(a.get("value"))
                            for a in span.get("attributes", [])
                        },
                    }
                )
    return spans
