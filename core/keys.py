"""The master key of the tenants' secrets, as the environment gives it (read by settings and by
`manage.py hil_secrets rotate`)."""

import base64
import binascii


def master_key_from_text(text: str) -> bytes:
    """The 32 bytes of a master key written as base64; the error does not repeat the text."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != 32:
        raise ValueError("a master key is the base64 of 32 bytes: "
                         "python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'")
    return key
