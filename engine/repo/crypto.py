"""Keys and sealing: how every repository object is authenticated and encrypted.

Words: the *master key* is 64 random bytes made at ``init``: 32 for AES-256-GCM
("enc") and 32 for HMAC-SHA256 blob ids ("mac"). It is stored only *wrapped*:
encrypted with a key derived from the password by scrypt. To *seal* bytes is to
encrypt them with a fresh 12-byte nonce (``nonce || ciphertext || tag``); an
unencrypted repository seals as the identity and relies on content hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.errors import IntegrityError, WrongPassword

NONCE = 12
TAG = 16

# Production scrypt cost; tests pass a cheaper one (n=2**10) through init().
DEFAULT_KDF = {"name": "scrypt", "n": 2**15, "r": 8, "p": 1}


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def derive_kek(password: str, kdf: dict) -> bytes:
    if kdf.get("name") != "scrypt":
        raise IntegrityError(f"unsupported key derivation {kdf.get('name')!r}", "config")
    n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    if not (2 <= n <= 2**22 and 1 <= r <= 32 and 1 <= p <= 16):
        raise IntegrityError("key derivation parameters out of range", "config")
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=b64d(kdf["salt"]),
        n=n,
        r=r,
        p=p,
        maxmem=256 * 1024 * 1024,
        dklen=32,
    )


def wrap_master(password: str, master: bytes, kdf_params: dict | None = None) -> dict:
    """A key record: KDF parameters with a fresh salt, and the wrapped master key."""
    kdf = dict(kdf_params or DEFAULT_KDF)
    kdf["salt"] = b64e(os.urandom(16))
    kek = derive_kek(password, kdf)
    nonce = os.urandom(NONCE)
    wrapped = nonce + AESGCM(kek).encrypt(nonce, master, b"backup-tui master key")
    return {"kdf": kdf, "wrapped_key": b64e(wrapped)}


def unwrap_master(password: str, record: dict) -> bytes:
    kek = derive_kek(password, record["kdf"])
    wrapped = b64d(record["wrapped_key"])
    try:
        return AESGCM(kek).decrypt(wrapped[:NONCE], wrapped[NONCE:], b"backup-tui master key")
    except InvalidTag:
        raise WrongPassword("wrong password: no key of this repository opens with it") from None


class Keys:
    """The working keys of an open repository (or none, when unencrypted)."""

    def __init__(self, master: bytes | None):
        self.encrypted = master is not None
        if master is not None:
            if len(master) != 64:
                raise IntegrityError("master key has the wrong length", "config")
            self._aead = AESGCM(master[:32])
            self._mac = master[32:]
        else:
            self._aead = None
            self._mac = b""

    def blob_id(self, data: bytes | memoryview) -> str:
        if self.encrypted:
            return hmac.digest(self._mac, data, "sha256").hex()  # one-shot, in C
        return hashlib.sha256(data).hexdigest()

    def mac(self, data: bytes) -> str:
        """An authenticator for small unsealed records (config). Empty when unencrypted."""
        if not self.encrypted:
            return ""
        return hmac.new(self._mac, b"record:" + data, hashlib.sha256).hexdigest()

    def chunker_seed(self) -> int:
        """Secret gear-table seed so chunk boundaries do not reveal content."""
        if not self.encrypted:
            return 0
        digest = hmac.new(self._mac, b"chunker-seed", hashlib.sha256).digest()
        return int.from_bytes(digest[:4], "little")

    def seal(self, plain: bytes) -> bytes:
        if self._aead is None:
            return plain
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, plain, None)

    def open(self, sealed: bytes | memoryview, what: str) -> bytes:
        if self._aead is None:
            return bytes(sealed)
        if len(sealed) < NONCE + TAG:
            raise IntegrityError(f"{what}: too short to be a sealed object", what)
        try:
            return self._aead.decrypt(bytes(sealed[:NONCE]), bytes(sealed[NONCE:]), None)
        except InvalidTag:
            raise IntegrityError(
                f"{what}: authentication failed (corrupt or tampered)", what
            ) from None
