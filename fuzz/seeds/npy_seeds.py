#!/usr/bin/env python3
"""Writes the npy_read target's seed corpus into the directory given (default
fuzz/corpus/npy_read): the small .npy files of tests/fixtures/pytorch, and hand-made
headers numpy can write or a hostile file could claim (other dtypes and orders,
huge, negative and zero extents, versions 2.0 and 3.0, structured dtypes). Plain
Python: no numpy needed."""

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "fuzz", "corpus", "npy_read")


def npy(header: str, body: bytes, version=(1, 0), pad=True) -> bytes:
    """A .npy file with `header` (the dict's text) padded as numpy pads it."""
    prefix_len = 10 if version[0] == 1 else 12
    text = header
    if pad:
        total = prefix_len + len(text) + 1
        text += " " * ((64 - total % 64) % 64)
    text += "\n"
    raw = text.encode("utf-8" if version[0] == 3 else "latin1")
    size = struct.pack("<H", len(raw)) if version[0] == 1 else struct.pack("<I", len(raw))
    return b"\x93NUMPY" + bytes(version) + size + raw + body


def header(descr: str, shape: str, fortran=False) -> str:
    return "{'descr': %s, 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, shape)


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {}
    fixtures = os.path.join(ROOT, "tests", "fixtures", "pytorch")
    for directory, _, names in sorted(os.walk(fixtures)):
        for name in sorted(names):
            path = os.path.join(directory, name)
            if name.endswith(".npy") and os.path.getsize(path) <= 16384:
                with open(path, "rb") as file:
                    seeds["fixture_" + os.path.basename(directory) + "_" + name] = file.read()

    f4 = struct.pack("<6f", 0.5, 2.0, -1.0, 0.1, 0.2, 0.3)
    cases = {
        "f4_2x3": (header("'<f4'", "(2, 3)"), f4),
        "f4_fortran": (header("'<f4'", "(2, 3)", True), f4),
        "f4_fortran_row": (header("'<f4'", "(1, 6)", True), f4),
        "f4_big_endian": (header("'>f4'", "(2, 3)"), struct.pack(">6f", 0.5, 2.0, -1.0, 0.1, 0.2, 0.3)),
        "f8_2x3": (header("'<f8'", "(2, 3)"), struct.pack("<6d", 0.5, 2.0, -1.0, 0.1, 0.2, 0.3)),
        "f2_2x3": (header("'<f2'", "(2, 3)"), struct.pack("<6e", 0.5, 2.0, -1.0, 0.1, 0.2, 0.3)),
        "f4_nd": (header("'<f4'", "(1, 3, 2)"), f4),
        "i8_2": (header("'<i8'", "(2,)"), struct.pack("<2q", 1, 2)),
        "i4_2": (header("'<i4'", "(2,)"), struct.pack("<2i", 1, -100)),
        "u4_2": (header("'<u4'", "(2,)"), struct.pack("<2I", 1, 2)),
        "i2_2": (header("'<i2'", "(2,)"), struct.pack("<2h", 1, 2)),
        "u2_2": (header("'<u2'", "(2,)"), struct.pack("<2H", 1, 2)),
        "i1_2": (header("'|i1'", "(2,)"), struct.pack("<2b", 1, -1)),
        "u1_2": (header("'|u1'", "(2,)"), struct.pack("<2B", 1, 2)),
        "b1_2": (header("'|b1'", "(2,)"), b"\x01\x00"),
        "c8_2": (header("'<c8'", "(2,)"), b"\x00" * 16),
        "object": (header("'|O'", "(2,)"), b"\x00" * 16),
        "unicode": (header("'<U4'", "(2,)"), b"\x00" * 32),
        "bytes": (header("'|S3'", "(2,)"), b"abcdef"),
        "void": (header("'|V4'", "(2,)"), b"\x00" * 8),
        "datetime": (header("'<M8[s]'", "(2,)"), b"\x00" * 16),
        "structured": (header("[('a', '<f4'), ('b', '<i8')]", "(2,)"), b"\x00" * 24),
        "structured_nested": (header("[('a', [('x', '<f4')]), ('b', '<f4', (2, 2))]", "(1,)"), b"\x00" * 20),
        "structured_empty": (header("[]", "(3,)"), b""),
        "subarray_huge": (header("[('a', '<f4', (4294967296, 4294967296))]", "(1,)"), b""),
        "scalar": (header("'<f4'", "()"), struct.pack("<f", 1.0)),
        "zero_rows": (header("'<f4'", "(0, 3)"), b""),
        "zero_huge": (header("'<f4'", "(0, 18446744073709551615)"), b""),
        "huge": (header("'<f4'", "(4294967296, 4294967296)"), b""),
        "huge_wraps": (header("'<f4'", "(4611686018427387904, 4)"), b""),
        "huge_stride": (header("'<f4'", "(1, 4611686018427387904, 4, 0)"), b""),
        "negative": (header("'<f4'", "(-1, 3)"), f4),
        "bigint": (header("'<f4'", "(340282366920938463463374607431768211456,)"), b""),
        "float_extent": (header("'<f4'", "(2.0, 3)"), f4),
        "list_shape": (header("'<f4'", "[2, 3]"), f4),
        "nested_shape": (header("'<f4'", "((2,), 3)"), f4),
        "no_descr": ("{'fortran_order': False, 'shape': (2, 3), }", f4),
        "duplicate_key": ("{'descr': '<f4', 'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }", f4),
        "extra_key": ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", f4),
        "not_dict": ("[1, 2, 3]", f4),
        "deep": ("[" * 2000 + "]" * 2000, b""),
        "deep_dict": ("{'a': " * 1000 + "1" + "}" * 1000, b""),
        "deep_tuple": (header("'<f4'", "(" * 1000 + "2," + ")" * 1000), b""),
        "long_string": (header("'" + "x" * 9000 + "'", "(2,)"), b""),
        "escapes": (header("'\\x3cf4'", "(2, 3)"), f4),
        "truncated_body": (header("'<f4'", "(2, 3)"), f4[:10]),
        "long_body": (header("'<f4'", "(2, 3)"), f4 + b"\x00" * 4),
    }
    for name, (text, body) in cases.items():
        seeds[name] = npy(text, body)
    seeds["v2_f4"] = npy(header("'<f4'", "(2, 3)"), f4, (2, 0))
    seeds["v3_f4"] = npy(header("'<f4'", "(2, 3)"), f4, (3, 0))
    seeds["v3_utf8_field"] = npy(header("[('\u00e9', '<f4')]", "(2,)"), b"\x00" * 8, (3, 0))
    seeds["v1_minor"] = npy(header("'<f4'", "(2, 3)"), f4, (1, 5))
    seeds["v4"] = npy(header("'<f4'", "(2, 3)"), f4, (4, 0))
    seeds["unpadded"] = npy(header("'<f4'", "(2, 3)"), f4, pad=False)
    seeds["magic_only"] = b"\x93NUMPY"
    seeds["header_claims_more"] = b"\x93NUMPY\x01\x00\xff\xff{'descr'"
    seeds["v2_claims_4g"] = b"\x93NUMPY\x02\x00\xff\xff\xff\xff{'descr'"
    seeds["empty"] = b""
    for name, data in seeds.items():
        with open(os.path.join(OUT, name + ".npy"), "wb") as file:
            file.write(data)
    print(f"{len(seeds)} seeds in {OUT}")


if __name__ == "__main__":
    main()
