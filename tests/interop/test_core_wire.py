from __future__ import annotations

DOMAINS = ["127.0.0.1", "localhost", "example.org", "example.net", "company.com",
           "chair-dnrc.example.com", "registrar.example.com", "[2001:db8::10]",
           "[2001:db8::192.0.2.1]", "host.example.net"]


def _comma_outside_quotes(value: bytes) -> int:
    quoted = False
    i = 0
    while i < len(value):
        ch = value[i]
        if quoted and ch == 0x5C:  # backslash: quoted-pair
            i += 2
            continue
        if ch == 0x22:
            quoted = not quoted
        elif ch == 0x2C and not quoted:
            return i
        i += 1
    return len(value)


def add_rport(data: bytes) -> bytes:
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        head_end = len(data)
    pos = data.find(b"\r\n") + 2
    while 1 < pos < head_end:
        eol = data.find(b"\r\n", pos)
        if eol < 0 or eol > head_end:
            eol = head_end
        line = data[pos:eol]
        name, sep, _ = line.partition(b":")
        if sep and line[:1] not in (b" ", b"\t") and name.strip().lower() in (b"via", b"v"):
            vstart = pos + len(name) + 1
            vend = eol
            while vend < head_end and data[vend + 2:vend + 3] in (b" ", b"\t"):
                nxt = data.find(b"\r\n", vend + 2)
                vend = head_end if nxt < 0 or nxt > head_end else nxt
            value = data[vstart:vend]
            parm = value[:_comma_outside_quotes(value)]
            for p in parm.split(b";")[1:]:
                if p.split(b"=", 1)[0].strip().lower() == b"rport":
                    return data
            ins = vstart + len(parm.rstrip(b" \t\r\n"))
            return data[:ins] + b";rport" + data[ins:]
        pos = eol + 2
    return data
