"""AES-256-GCM for the tenants' secrets. Each tenant has a key of its own, derived with HKDF-SHA256 from
the master key; the tenant's id and the secret's name are the associated data, so a ciphertext moved to
another tenant or name does not decrypt. A stored ciphertext is its random 96-bit nonce, then AES-GCM's
output (the encrypted value and its 16-byte tag)."""

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.views.decorators.debug import sensitive_variables

NONCE_BYTES = 12


class Undecryptable(Exception):
    """The ciphertext was not made with this key for this tenant and name, or was altered."""


@sensitive_variables()
def tenant_key(master_key: bytes, tenant_id: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"hil secret key, tenant %d" % tenant_id).derive(master_key)


def _associated_data(tenant_id: int, name: str) -> bytes:
    return f"{tenant_id}:{name}".encode()


@sensitive_variables()
def encrypt(master_key: bytes, tenant_id: int, name: str, plaintext: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(tenant_key(master_key, tenant_id)).encrypt(
        nonce, plaintext.encode(), _associated_data(tenant_id, name))


@sensitive_variables()
def decrypt(master_key: bytes, tenant_id: int, name: str, ciphertext: bytes) -> str:
    nonce, sealed = bytes(ciphertext[:NONCE_BYTES]), bytes(ciphertext[NONCE_BYTES:])
    try:
        return AESGCM(tenant_key(master_key, tenant_id)).decrypt(
            nonce, sealed, _associated_data(tenant_id, name)).decode()
    except (InvalidTag, ValueError):  # ValueError: too short to hold a nonce and a tag
        raise Undecryptable() from None
