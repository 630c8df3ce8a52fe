"""Makes a fixed CMP answer (a PKIMessage made once by `openssl cmp -use_mock_srv`) the answer to
one particular request, for the test peers that answer every request with the same message
(tests/cmp_tcp_responder.py --fixed, tests/fault_endpoint.py). A real server copies the
request's transactionID into its response and the request's senderNonce into the response's
recipNonce (RFC 9810 §5.1.1); pkirelay refuses an answer that does not, so a fixed answer gets
these two header fields from the request, and nothing else changes. The protection is not
recomputed (the peers have no key the client trusts, and pkirelay never verifies it).

DER only (definite lengths), as OpenSSL writes it: the header is
  PKIHeader ::= SEQUENCE { pvno, sender, recipient, [0] messageTime, [1] protectionAlg,
                           [2] senderKID, [3] recipKID, [4] transactionID, [5] senderNonce,
                           [6] recipNonce, [7] freeText, [8] generalInfo }   (EXPLICIT tags)
"""


def _length(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag, value):
    return bytes([tag]) + _length(len(value)) + value


def _elements(buf):
    """The (tag, whole TLV bytes, value) of each element in the content octets buf."""
    out, i = [], 0
    while i < len(buf):
        tag = buf[i]
        first = buf[i + 1]
        if first < 0x80:
            n, hl = first, 2
        else:
            k = first & 0x7F
            if k == 0:
                raise ValueError("indefinite length: not DER")
            n, hl = int.from_bytes(buf[i + 2:i + 2 + k], "big"), 2 + k
        end = i + hl + n
        if end > len(buf):
            raise ValueError("truncated")
        out.append((tag, buf[i:end], buf[i + hl:end]))
        i = end
    return out


def _only(der):
    (tag, _, value), = _elements(der)
    if tag != 0x30:
        raise ValueError("not a SEQUENCE")
    return value


def header_fields(message):
    """{tag: inner value} of the PKIMessage's optional header fields ([0]..[8])."""
    header = _elements(_only(message))[0][2]
    fields = {}
    for tag, _, value in _elements(header)[3:]:
        inner = _elements(value)[0][2]
        fields[tag & 0x1F] = inner
    return fields


def answer_to(request, answer):
    """answer with its transactionID and recipNonce set from request's transactionID and
    senderNonce (each left as it was when the request has none)."""
    req = header_fields(request)
    parts = _elements(_only(answer))
    header = _elements(parts[0][2])
    fixed = [h[1] for h in header[3:]]
    tags = [h[0] & 0x1F for h in header[3:]]
    wanted = {}
    if 4 in req:
        wanted[4] = req[4]
    if 5 in req:
        wanted[6] = req[5]
    fields = dict(zip(tags, fixed))
    for n, value in wanted.items():
        fields[n] = _tlv(0xA0 | n, _tlv(0x04, value))
    new_header = b"".join(h[1] for h in header[:3]) + b"".join(fields[n] for n in sorted(fields))
    body = _tlv(0x30, new_header) + b"".join(p[1] for p in parts[1:])
    return _tlv(0x30, body)


if __name__ == "__main__":
    # cmp_answer.py REQUEST ANSWER OUT: writes ANSWER re-addressed to REQUEST.
    import sys
    with open(sys.argv[1], "rb") as r, open(sys.argv[2], "rb") as a:
        out = answer_to(r.read(), a.read())
    with open(sys.argv[3], "wb") as f:
        f.write(out)
