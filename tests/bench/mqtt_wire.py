"""The few MQTT 3.1.1 encodings the bench scripts' Python clients need (handover.sh, startup.sh)."""
import struct


def remaining(n):
    """The Remaining Length field of a packet whose body is `n` bytes."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body):
    """A packet: its first byte, its Remaining Length, its body."""
    return bytes([first]) + remaining(len(body)) + body


def s16(b):
    """A length-prefixed string or binary field."""
    return struct.pack(">H", len(b)) + b
