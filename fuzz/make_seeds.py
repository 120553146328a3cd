#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/): a few well-formed
inputs per target, so that fuzzing starts from messages that get past decoding. Run it again
after a change to proto/ringbid.proto; the files it writes are committed."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = b"fuzz-service-token-0123456789abcdef"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def fv(num, n):  # varint field
    return varint(num << 3) + varint(n)


def fb(num, data):  # length-delimited field
    if isinstance(data, str):
        data = data.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data


def fd(num, x):  # double field
    return varint(num << 3 | 1) + struct.pack("<d", x)


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- messages -------------------------------------------------------------------------------
arrived = fb(1, "c-1") + fb(2, "sales") + fb(3, "es") + fv(4, 2) + fb(5, "+1 555 0100")
call_request = fb(1, TOKEN) + fb(10, arrived)
outcome = fb(1, "c-1") + fv(2, 1) + fv(3, 5)
qa = fb(1, "c-1") + fv(2, 4) + fv(3, 90) + fb(4, "sup-1")
call_outcomes = fb(1, TOKEN) + fb(16, fb(1, outcome) + fb(1, qa))
login = fv(1, 1) + fb(2, TOKEN) + fb(10, fv(1, 42) + fb(2, "s3cret-pass"))
answer = fv(1, 2) + fb(2, TOKEN) + fb(14, fv(1, 7) + fv(2, 1))
enqueue = (fb(1, "c-1") + fb(2, "sales") + fb(3, "es") + fv(4, 1) + fv(5, 1700000000000000)
           + fv(6, 42) + fd(7, 0.2))
update = (fv(1, 42) + fv(2, 1) + fb(3, "es") + fd(4, 87.5) + fb(5, fb(1, "sales") + fd(2, 91.0))
          + fv(6, 1700000000000000) + fv(7, 3))
cdr = (fb(1, "c-1") + fb(2, "c-1") + fb(3, "sales") + fv(4, 42) + fv(5, 1700000000000000)
       + fv(6, 1700000001000000) + fv(7, 1700000002000000) + fv(8, 1700000062000000)
       + fv(9, 60) + fv(10, 1) + fv(11, 1) + fv(13, 1) + fv(14, 1) + fv(15, 1)
       + fb(16, fv(1, 42) + fv(2, 1700000001000000) + fv(3, 0)))
journal_call = fb(1, fb(1, fb(1, "c-1") + fb(2, "sales") + fv(3, 2) + fv(6, 1700000000000000)))

write("messages", "call_arrived", b"\x00" + call_request)
write("messages", "call_outcomes", b"\x00" + call_outcomes)
write("messages", "agent_login", b"\x02" + login)
write("messages", "agent_answer", b"\x02" + answer)
write("messages", "envelope_enqueue", b"\x03" + fb(1, TOKEN) + fb(10, enqueue))
write("messages", "envelope_update", b"\x03" + fb(1, TOKEN) + fb(13, update))
write("messages", "cdr_batch", b"\x04" + fb(1, TOKEN) + fb(2, cdr) + fb(2, cdr))
write("messages", "cdr_ack", b"\x05" + fb(2, "c-1") + fb(5, fb(1, "c-1") + fv(2, 1)))
write("messages", "journal_call", b"\x06" + journal_call)


# --- auction: length-prefixed messages, control byte (2 << 1 | link) adds the token ---------
def amsg(link, body, ctl=None):
    c = ctl if ctl is not None else (2 << 1 | link)
    m = bytes([c]) + body
    return struct.pack("<H", len(m)) + m


PRESENCE, BROKER = 0, 1
snap = fb(4, fb(1, fv(1, 7) + fv(2, 1) + fb(3, "es") + fd(4, 60.0) + fv(6, 5) + fv(7, 1))
          + fv(2, 1) + fv(3, 1))  # AgentSnapshot{first, last, agents}
write("auction", "update_then_enqueue",
      amsg(PRESENCE, fb(13, update)) + amsg(BROKER, fb(10, enqueue)))
write("auction", "enqueue_then_update",
      amsg(BROKER, fb(10, enqueue)) + amsg(PRESENCE, fb(13, update))
      + amsg(BROKER, fb(11, fb(1, "c-1") + fv(2, 42))))
write("auction", "snapshot", amsg(PRESENCE, fb(14, fv(1, 1) + snap))
      + amsg(BROKER, fb(10, enqueue)) + amsg(0, b"", ctl=1 << 1))
write("auction", "link_events", amsg(0, b"", ctl=0) + amsg(0, b"", ctl=1 | 1 << 4)
      + amsg(BROKER, fb(10, enqueue)))


# --- journal: records framed as length, CRC-32C, protobuf ---------------------------------
def record(body):
    return struct.pack("<II", len(body), crc32c(body)) + body


cdr_entry = fb(2, cdr)
acked = fb(3, "c-1")
offer_id = fv(4, 1024)
write("journal", "calls_and_cdrs", record(offer_id) + record(journal_call) + record(cdr_entry)
      + record(acked))
write("journal", "torn_tail", record(journal_call) + record(cdr_entry)[:-3])
write("journal", "bad_crc", record(journal_call) + struct.pack("<II", 3, 0) + b"abc")
write("journal", "empty", b"")

# --- batch: what a link between services carries, one envelope or a Batch of them -------------
def batch(*envs):
    return b"".join(fb(2047, e) for e in envs)


env_enqueue = fb(1, TOKEN) + fb(10, fb(1, "c-1") + fb(2, "p") + fb(3, "en"))
env_dequeue = fb(1, TOKEN) + fb(11, fb(1, "c-1") + fv(2, 42))
write("batch", "one_envelope", env_enqueue)
write("batch", "two_in_a_batch", batch(env_enqueue, env_dequeue))
write("batch", "empty_entry", batch(b"", env_dequeue))
write("batch", "truncated", batch(env_enqueue, env_dequeue)[:-4])

# --- text: selector byte, then the text ---------------------------------------------------
write("text", "bearer", b"\x00Bearer " + b"ab" * 32)
write("text", "period", b"\x012026-11-23")
write("text", "format", b"\x02csv")
write("text", "ms", b"\x031.5s")
write("text", "env_value", b"\x04tcp://127.0.0.1:7105")
write("text", "valid_id", b"\x05call-1:x.y")
write("text", "env_file", b"\x06RINGBID_PORT_BASE=7100\nRINGBID_SERVICE_TOKEN=abc\n# comment\n")
