"""Encrypted Temporal payloads: what reaches workflow history is ciphertext, readable only with the key.

History holds names, counts and checkpoints, but a backfill range bound *is* a key value, and string keys
are often personal data (e-mail addresses). Temporal's standard answer is a payload codec: every payload
is encrypted by the client or worker before it leaves the process and decrypted when it comes back, so
the server (and anyone reading its database or exported histories) sees ciphertext only.

- AES-256-GCM (``cryptography``) with a random 96-bit nonce per payload; the whole original payload
  (metadata and data) is the plaintext, so the encoding of the value is hidden too.
- The key is ``$DUALWRITE_PAYLOAD_KEY``: 32 bytes, base64 (``dualwrite codec-server --new-key`` prints
  one). Each encrypted payload names its key by id (the first 8 hex digits of the key's SHA-256) in its
  metadata, so keys rotate: set the new key in ``DUALWRITE_PAYLOAD_KEY`` and keep the previous ones in
  ``$DUALWRITE_PAYLOAD_OLD_KEYS`` (comma-separated) until no open history needs them.
- Payloads that are not encrypted pass through decoding untouched: histories written before the key was
  set still replay and still read.
- Every process that talks to the migration workflows needs the same key: the workers, the CLI, and the
  Web UI through ``dualwrite codec-server`` (Temporal's remote codec protocol: POST ``/encode`` and
  ``/decode``).

Without a key, payloads are written as they are (JSON), as before; the worker and ``dualwrite check``
warn that range bounds of string keys are then in clear. Workers and the CLI use this module;
applications never do.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence

from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, PayloadCodec

from dualwrite.errors import ConfigError

KEY_ENV = "DUALWRITE_PAYLOAD_KEY"
OLD_KEYS_ENV = "DUALWRITE_PAYLOAD_OLD_KEYS"
ENCODING = b"binary/encrypted"
CIPHER = b"AES256-GCM"
KEY_ID = "encryption-key-id"
_NONCE_BYTES = 12


def key_id(key: bytes) -> str:
    """A key's public name: the first 8 hex digits of its SHA-256 (never the key)."""
    return hashlib.sha256(key).hexdigest()[:8]


def parse_key(text: str, where: str = KEY_ENV) -> bytes:
    """A base64 (standard or URL-safe) 32-byte key; a :class:`ConfigError` that never quotes it."""
    raw = text.strip()
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_" if ("-" in raw or "_" in raw) else None,
                               validate=True)
    except ValueError:
        raise ConfigError([], f"{where} is not base64 (expected 32 random bytes, base64-encoded; "
                              "`dualwrite codec-server --new-key` prints one)") from None
    if len(key) != 32:
        raise ConfigError([], f"{where} holds {len(key)} bytes; AES-256 needs exactly 32")
    return key


def new_key() -> str:
    """A fresh random key, base64-encoded, for ``DUALWRITE_PAYLOAD_KEY``."""
    return base64.b64encode(os.urandom(32)).decode()


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over whole payloads, the key named in each payload's metadata."""

    def __init__(self, key: bytes, old_keys: Sequence[bytes] = ()) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415 - only with a key

        self.current = key_id(key)
        self._ciphers = {key_id(k): AESGCM(k) for k in (*old_keys, key)}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        cipher = self._ciphers[self.current]
        out: list[Payload] = []
        for p in payloads:
            nonce = os.urandom(_NONCE_BYTES)
            sealed = cipher.encrypt(nonce, p.SerializeToString(), None)
            out.append(Payload(metadata={"encoding": ENCODING, "encryption-cipher": CIPHER,
                                         KEY_ID: self.current.encode()}, data=nonce + sealed))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out: list[Payload] = []
        for p in payloads:
            if p.metadata.get("encoding") != ENCODING:
                out.append(p)  # written before a key was set: plain, and still readable
                continue
            kid = p.metadata.get(KEY_ID, b"").decode()
            cipher = self._ciphers.get(kid)
            if cipher is None:
                raise ConfigError([], f"a payload is encrypted with key {kid or '?'}, which is neither "
                                      f"{KEY_ENV} ({self.current}) nor one of {OLD_KEYS_ENV}")
            plain = cipher.decrypt(p.data[:_NONCE_BYTES], p.data[_NONCE_BYTES:], None)
            out.append(Payload.FromString(plain))
        return out


def codec_from_env(environ: Mapping[str, str] | None = None) -> EncryptionCodec | None:
    """The codec for ``$DUALWRITE_PAYLOAD_KEY`` (and old keys), or None when no key is set."""
    env = os.environ if environ is None else environ
    text = env.get(KEY_ENV, "").strip()
    if not text:
        return None
    old = [parse_key(k, OLD_KEYS_ENV) for k in env.get(OLD_KEYS_ENV, "").split(",") if k.strip()]
    return EncryptionCodec(parse_key(text), old)


def data_converter(environ: Mapping[str, str] | None = None) -> DataConverter:
    """The project's data converter (pydantic), encrypting when a key is configured: use it for every
    Client, worker and Replayer."""
    codec = codec_from_env(environ)
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(pydantic_data_converter, payload_codec=codec)


CLEAR_WARNING = (f"{KEY_ENV} is not set: Temporal payloads are not encrypted, so backfill range bounds of "
                 "string keys (e-mail addresses, names) are written to workflow history in clear. Set it on "
                 "every worker and client (see README, 'Encrypted history').")


def payloads_in_clear(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return not env.get(KEY_ENV, "").strip()
