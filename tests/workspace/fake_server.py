"""A model server without torch, for the scorer's protocol tests: it speaks the framing
of prepare.py serve-model, and misbehaves on purpose as its first argument says.

    python fake_server.py MODE
"""

import os
import struct
import sys
import time

HEADER = struct.Struct("<4sIII")
CONTEXT = 32
MODE = sys.argv[1]


def read(n):
    data = sys.stdin.buffer.read(n)
    if len(data) < n:
        sys.exit(0)
    return data


def send(data):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def logits(b, t, value=0.0):
    return struct.pack(f"<{b * t * 256}f", *([value] * (b * t * 256)))


magic, *_ = HEADER.unpack(read(HEADER.size))
assert magic == b"ARgo", magic
if MODE == "exit_at_start":
    sys.exit(3)
if MODE == "fail":
    message = b"could not load checkpoint: \x1b[31mred\x1b[0m\x07 and a bell"
    send(HEADER.pack(b"ARer", len(message), 0, 0) + message)
    sys.exit(1)
if MODE == "huge_failure":
    send(HEADER.pack(b"ARer", 2**32 - 1, 0, 0))
    time.sleep(60)
send(HEADER.pack(b"ARok", CONTEXT, 1234, 0))
requests = 0
while True:
    magic, b, t, _ = HEADER.unpack(read(HEADER.size))
    read(b * t)
    requests += 1
    if MODE == "uniform":
        send(HEADER.pack(b"ARlg", b, t, 256) + logits(b, t))
    elif MODE == "garbage":
        send(b"val_bpb: 0.0001\n" * 4)
    elif MODE == "wrong_shape":
        send(HEADER.pack(b"ARlg", b, t, 255) + logits(b, t)[: b * t * 255 * 4])
    elif MODE == "wrong_rows":
        send(HEADER.pack(b"ARlg", b + 1, t, 256) + logits(b + 1, t))
    elif MODE == "nan":
        send(HEADER.pack(b"ARlg", b, t, 256) + logits(b, t, float("nan")))
    elif MODE == "huge_header":
        send(HEADER.pack(b"ARlg", 2**32 - 1, 2**32 - 1, 2**32 - 1))
        time.sleep(60)
    elif MODE == "hang":
        time.sleep(600)
    elif MODE == "exit_early":
        os._exit(0)
    elif MODE == "short":
        send(HEADER.pack(b"ARlg", b, t, 256) + logits(b, t)[:1000])
        os._exit(0)
    elif MODE == "hang_after_two":
        if requests > 2:
            time.sleep(600)
        send(HEADER.pack(b"ARlg", b, t, 256) + logits(b, t))
