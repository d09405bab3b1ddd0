"""adb's RSA authentication, the device's side (the simulated phone's, `loopback_adbd`; the host side is
adb-shell's or the adb server's): Android's public-key format and the signature check adbd does.

On CNXN an adbd that wants authentication sends AUTH(TOKEN) with 20 random bytes. The host signs them with its
private key (RSA PKCS#1 v1.5, the token taken as an already computed SHA-1 digest) and answers AUTH(SIGNATURE);
if no key the device knows verifies it, the device sends a fresh token, and the host may offer its public key,
AUTH(RSAPUBLICKEY), which the phone's user accepts or not ("Allow USB debugging?").

The public key travels (and sits in `~/.android/adbkey.pub` and the phone's `/data/misc/adb/adb_keys`) as base64
of mincrypt's `RSAPublicKey` struct, then a space and `user@host`: little-endian 32-bit words `len` (modulus
size in words, 64 for the 2048-bit keys adb uses), `n0inv` (-1 / n[0] mod 2^32), `n[len]`, `rr[len]`
(R^2 mod n with R = 2^(32 len)), and the exponent. Pure Python (`pow`); no third-party package.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ofa_core.errors import OFABenchError

AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3  # arg0 of an AUTH packet
TOKEN_SIZE = 20
KEY_WORDS = 64  # adb keys are 2048-bit
KEY_STRUCT = struct.Struct(f"<II{KEY_WORDS}I{KEY_WORDS}Ii")
# DER prefix of a DigestInfo holding a SHA-1 digest (RFC 8017, section 9.2, note 1)
SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")


class AdbKeyError(OFABenchError):
    """Text that is not an adb public key (wrong base64, size or struct fields)."""


def new_token() -> bytes:
    """A fresh random token for AUTH(TOKEN)."""
    return os.urandom(TOKEN_SIZE)


def _words_to_int(words: tuple[int, ...]) -> int:
    return sum(w << (32 * i) for i, w in enumerate(words))


def _int_to_words(value: int) -> list[int]:
    return [(value >> (32 * i)) & 0xFFFFFFFF for i in range(KEY_WORDS)]


@dataclass(frozen=True)
class AdbPublicKey:
    """One host's adb public key: RSA modulus and exponent, and the `user@host` comment that follows it (which
    is not part of the key: two keys are equal when their numbers are)."""

    modulus: int
    exponent: int
    comment: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str | bytes) -> "AdbPublicKey":
        """A key in Android's format (one line of adb_keys, an adbkey.pub, an AUTH(RSAPUBLICKEY) payload)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        blob, _, comment = text.strip().rstrip("\0").strip().partition(" ")
        try:
            raw = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            raise AdbKeyError("adb public key: not base64") from None
        if len(raw) != KEY_STRUCT.size:
            raise AdbKeyError(f"adb public key: {len(raw)} bytes, expected {KEY_STRUCT.size} (a 2048-bit key)")
        fields = KEY_STRUCT.unpack(raw)
        size, n0inv, exponent = fields[0], fields[1], fields[-1]
        modulus = _words_to_int(fields[2:2 + KEY_WORDS])
        rr = _words_to_int(fields[2 + KEY_WORDS:2 + 2 * KEY_WORDS])
        if size != KEY_WORDS:
            raise AdbKeyError(f"adb public key: modulus of {size} words, expected {KEY_WORDS}")
        if modulus >> (32 * KEY_WORDS - 1) != 1 or modulus % 2 == 0:
            raise AdbKeyError("adb public key: the modulus is not an odd 2048-bit number")
        if (n0inv * modulus + 1) % (1 << 32) != 0:
            raise AdbKeyError("adb public key: n0inv does not match the modulus")
        if rr != pow(2, 64 * KEY_WORDS, modulus):
            raise AdbKeyError("adb public key: rr does not match the modulus")
        if exponent not in (3, 65537):
            raise AdbKeyError(f"adb public key: exponent {exponent} (adb uses 3 or 65537)")
        return cls(modulus, exponent, comment.strip())

    def to_android(self) -> str:
        """The key in Android's format, `BASE64 user@host` (what adbkey.pub holds, without a newline)."""
        n0inv = (-pow(self.modulus, -1, 1 << 32)) % (1 << 32)
        rr = pow(2, 64 * KEY_WORDS, self.modulus)
        raw = KEY_STRUCT.pack(KEY_WORDS, n0inv, *_int_to_words(self.modulus), *_int_to_words(rr), self.exponent)
        text = base64.b64encode(raw).decode()
        return f"{text} {self.comment}" if self.comment else text

    def verify(self, token: bytes, signature: bytes) -> bool:
        """True if `signature` is this key's PKCS#1 v1.5 signature of `token` taken as a SHA-1 digest."""
        size = KEY_WORDS * 4
        if len(token) != TOKEN_SIZE or len(signature) != size:
            return False
        value = int.from_bytes(signature, "big")
        if value >= self.modulus:
            return False
        encoded = pow(value, self.exponent, self.modulus).to_bytes(size, "big")
        payload = SHA1_DIGEST_INFO + token
        expected = b"\x00\x01" + b"\xff" * (size - 3 - len(payload)) + b"\x00" + payload
        return hmac.compare_digest(encoded, expected)


def read_adb_keys(path: Path | str) -> list[AdbPublicKey]:
    """The keys of an adb_keys file (one per line, like the phone's /data/misc/adb/adb_keys); malformed lines
    are skipped, as adbd skips them. A missing file holds no keys."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    keys = []
    for line in lines:
        if line.strip():
            try:
                keys.append(AdbPublicKey.parse(line))
            except AdbKeyError:
                continue
    return keys
