#!/usr/bin/env python3
"""Writes a small catalog of product pictures (garments of several cuts, colours and patterns,
drawn here with the standard library alone) as PNG files into a folder, for scripts/dev.sh to
serve on loopback: sample_catalog.py DIR. Prints one `file<TAB>title` line per picture."""
import struct
import sys
import zlib
from pathlib import Path

SIZE = 256
BACKGROUND = (235, 235, 228)
PRODUCTS = [
    ("blue-shirt.png", "Blue shirt", (30, 50, 200), "shirt", "plain"),
    ("navy-shirt.png", "Navy shirt", (25, 35, 120), "shirt", "plain"),
    ("red-shirt.png", "Red shirt", (200, 30, 30), "shirt", "plain"),
    ("blue-striped-shirt.png", "Blue striped shirt", (30, 50, 200), "shirt", "stripes"),
    ("yellow-dotted-dress.png", "Yellow dotted dress", (230, 200, 40), "dress", "dots"),
    ("green-dress.png", "Green dress", (30, 150, 60), "dress", "plain"),
    ("black-trousers.png", "Black trousers", (25, 25, 25), "trousers", "plain"),
    ("khaki-trousers.png", "Khaki trousers", (170, 150, 100), "trousers", "plain"),
]


def inside(cut, u, v):
    if cut == "shirt":
        return (30 <= u < 70 and 25 <= v < 90) or (10 <= u < 90 and 25 <= v < 45)
    if cut == "trousers":
        return (10 <= v < 75 and (30 <= u < 48 or 52 <= u < 70)) or (30 <= u < 70 and 10 <= v < 25)
    return 15 <= v < 92 and u + 5 >= 50 - v // 2 and u <= 50 + v // 2


def pixel(colour, cut, pattern, x, y):
    u, v = x * 100 // SIZE, y * 100 // SIZE
    if not inside(cut, u, v):
        return BACKGROUND
    marked = (pattern == "stripes" and (v // 6) % 2 == 0) or (
        pattern == "dots" and u % 12 < 4 and v % 12 < 4)
    return (250, 250, 250) if marked else colour


def png(rows):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes(c for p in row for c in p) for row in rows)
    header = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, title, colour, cut, pattern in PRODUCTS:
        rows = [[pixel(colour, cut, pattern, x, y) for x in range(SIZE)] for y in range(SIZE)]
        (out / name).write_bytes(png(rows))
        print(f"{name}\t{title}")


if __name__ == "__main__":
    main()
