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


SCRYPT_MAXMEM = 256 * 1024 * 1024
WRAPPED_LEN = NONCE + 64 + TAG


def _whole(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _b64_field(record: dict, field: str, what: str, key: str) -> bytes:
    v = record.get(field)
    try:
        if not isinstance(v, str):
            raise ValueError
        return b64d(v)
    except (ValueError, UnicodeEncodeError):
        raise IntegrityError(f"{what}: {key}.{field} is not base64", what) from None


def check_kdf(kdf: object, what: str = "config", key: str = "encryption.kdf") -> dict:
    """The key derivation parameters, checked; IntegrityError naming the object (``what``)
    and the key for anything malformed, unsupported or out of range."""
    if not isinstance(kdf, dict):
        raise IntegrityError(f"{what}: {key} is missing or not an object", what)
    if kdf.get("name") != "scrypt":
        raise IntegrityError(f"{what}: {key}.name: unsupported key derivation "
                             f"{kdf.get('name')!r}", what)
    for field in ("n", "r", "p"):
        if not _whole(kdf.get(field)):
            raise IntegrityError(f"{what}: {key}.{field} is not a whole number "
                                 f"({kdf.get(field)!r})"[:300], what)
    n, r, p = kdf["n"], kdf["r"], kdf["p"]
    if not (2 <= n <= 2**22 and n & (n - 1) == 0):
        raise IntegrityError(f"{what}: {key}.n out of range (a power of two, 2 to 2^22)", what)
    if not 1 <= r <= 32:
        raise IntegrityError(f"{what}: {key}.r out of range (1 to 32)", what)
    if not 1 <= p <= 16:
        raise IntegrityError(f"{what}: {key}.p out of range (1 to 16)", what)
    if 128 * r * (n + p + 2) > SCRYPT_MAXMEM:
        raise IntegrityError(f"{what}: {key}: n and r need more than 256 MiB of memory", what)
    salt = _b64_field(kdf, "salt", what, key)
    if not 8 <= len(salt) <= 64:
        raise IntegrityError(f"{what}: {key}.salt has {len(salt)} bytes (8 to 64)", what)
    return kdf


def derive_kek(password: str, kdf: dict, what: str = "config",
               key: str = "encryption.kdf") -> bytes:
    check_kdf(kdf, what, key)
    try:
        return hashlib.scrypt(
            password.encode("utf-8"),
            salt=b64d(kdf["salt"]),
            n=kdf["n"],
            r=kdf["r"],
            p=kdf["p"],
            maxmem=SCRYPT_MAXMEM + 1024 * 1024,
            dklen=32,
        )
    except (ValueError, MemoryError) as e:
        raise IntegrityError(f"{what}: {key}: key derivation failed ({e})", what) from None


def wrap_master(password: str, master: bytes, kdf_params: dict | None = None) -> dict:
    """A key record: KDF parameters with a fresh salt, and the wrapped master key."""
    kdf = dict(kdf_params or DEFAULT_KDF)
    kdf["salt"] = b64e(os.urandom(16))
    kek = derive_kek(password, kdf)
    nonce = os.urandom(NONCE)
    wrapped = nonce + AESGCM(kek).encrypt(nonce, master, b"backup-tui master key")
    return {"kdf": kdf, "wrapped_key": b64e(wrapped)}


def unwrap_master(password: str, record: object, what: str = "config",
                  key: str = "encryption") -> bytes:
    """The master key from a key record (``config.encryption`` or a ``keys/`` object).
    WrongPassword when the password does not open it; IntegrityError naming the object
    and key when the record is malformed."""
    if not isinstance(record, dict):
        raise IntegrityError(f"{what}: {key} is not an object", what)
    kdf_key = f"{key}.kdf" if key else "kdf"
    check_kdf(record.get("kdf"), what, kdf_key)
    wrapped = _b64_field(record, "wrapped_key", what, key or "record")
    if len(wrapped) != WRAPPED_LEN:
        raise IntegrityError(f"{what}: {key or 'record'}.wrapped_key has {len(wrapped)} bytes, "
                             f"not {WRAPPED_LEN}", what)
    kek = derive_kek(password, record["kdf"], what, kdf_key)
    try:
        return AESGCM(kek).decrypt(wrapped[:NONCE], wrapped[NONCE:], b"backup-tui master key")
    except InvalidTag:
        raise WrongPassword("wrong password: no key of this repository opens with it") from None


class Keys:
    """The working keys of an open repository (or none, when unencrypted)."""

    def __init__(self, master: bytes | None):
        self.encrypted = master is not None
        self._master = master  # for the key cache (engine/repo/keycache.py) only
        if master is not None:
            if len(master) != 64:
                raise IntegrityError("master key has the wrong length", "config")
            self._aead = AESGCM(master[:32])
            self._mac = master[32:]
        else:
            self._aead = None
            self._mac = b""

    def master_key(self) -> bytes | None:
        """The 64-byte master key (None when unencrypted): for the key cache only."""
        return self._master

    def blob_id(self, data: bytes | memoryview) -> str:
        if self.encrypted:
            return hmac.digest(self._mac, data, "sha256").hex()  # one-shot, in C
        return hashlib.sha256(data).hexdigest()

    def mac(self, data: bytes) -> str:
        """An authenticator for small unsealed records (config). Empty when unencrypted."""
        if not self.encrypted:
            return ""
        return hmac.new(self._mac, b"record:" + data, hashlib.sha256).hexdigest()

    def mac_matches(self, data: bytes, stored: object) -> bool:
        """Whether ``stored`` is the authenticator of data (compared in constant time)."""
        return isinstance(stored, str) and hmac.compare_digest(
            self.mac(data).encode("ascii"), stored.encode("utf-8", "surrogatepass"))

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
            # views, not copies: AESGCM reads any buffer (a copy of a 4 MiB run's
            # blob costs more than its decryption)
            view = memoryview(sealed)
            return self._aead.decrypt(view[:NONCE], view[NONCE:], None)
        except InvalidTag:
            raise IntegrityError(
                f"{what}: authentication failed (corrupt or tampered)", what
            ) from None
