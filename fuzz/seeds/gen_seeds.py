#!/usr/bin/env python3
"""Writes the seed inputs of the `record_decode` and `index_decode` fuzz targets.

Each input is one option byte (see the target's doc comment) followed by the bytes to
decode. Run from anywhere: `python3 fuzz/seeds/gen_seeds.py`. The `segment_open` seeds
are `arbitrary`-encoded inputs kept from fuzzing runs, not generated here.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def frame(offset, ts, batch_delta, key, headers, payload, flags=None):
    """A record frame as `surety_log::record::encode` lays it out."""
    if flags is None:
        flags = 1 if key is not None else 0
    key = key or b""
    body = struct.pack("<QqIBIH", offset, ts, batch_delta, flags, len(key), len(headers))
    body += key
    for name, value in headers:
        body += struct.pack("<H", len(name)) + name + struct.pack("<I", len(value)) + value
    body += payload
    return struct.pack("<II", len(body) + 4, crc32c(body)) + body


def index_file(base, next_offset, segment_len, max_ts, entries):
    """An index file as `surety_log::index::IndexFile::encode` lays it out."""
    h = b"SURETYIX" + struct.pack("<HHI", 1, 16, len(entries))
    h += struct.pack("<QQQq", base, next_offset, segment_len, max_ts)
    h += struct.pack("<II", crc32c(h), 0)
    for offset, position in entries:
        e = struct.pack("<QI", offset, position)
        h += e + struct.pack("<I", crc32c(e))
    return h


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


TS = 1_700_000_000_123
full = frame(42, TS, 3, b"k1", [(b"h", b"v"), (b"", b"")], b"hello")
write("record_decode", "full", b"\x00" + full)
write("record_decode", "minimal", b"\x00" + frame(0, 0, 0, None, [], b""))
write("record_decode", "empty_key", b"\x00" + frame(2**64 - 1, -1, 2**32 - 1, b"", [], b"x"))
write("record_decode", "two_frames", b"\x00" + full + frame(43, TS, 4, None, [(b"n", b"1")], b"p"))
write("record_decode", "truncated", b"\x00" + full[:-3])
write("record_decode", "end_of_data", b"\x00" + bytes(32))
# Bad CRC on purpose; option bit 2 makes the target patch it, reaching the body checks.
bad_name = bytearray(frame(7, TS, 0, None, [(b"\xff\xfe", b"v")], b"p"))
bad_name[4:8] = b"\0\0\0\0"
write("record_decode", "fixcrc_non_utf8_header", b"\x04" + bytes(bad_name))
write("record_decode", "fixcrc_unknown_flag", b"\x04" + frame(7, TS, 0, None, [], b"p", flags=2))

write("index_decode", "two_entries", b"\x00" + index_file(100, 250, 9000, TS, [(100, 32), (180, 4200)]))
write("index_decode", "empty", b"\x00" + index_file(0, 0, 32, -(2**63), []))
write("index_decode", "out_of_order", b"\x00" + index_file(0, 9, 99, 0, [(5, 32), (4, 64)]))
write("index_decode", "patch_all", b"\x0f" + bytes(56 + 16 * 3))
write("index_decode", "short", b"\x00" + index_file(1, 2, 3, 4, [])[:40])
