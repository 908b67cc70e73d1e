"""Errors that services raise across app boundaries; hil_project/api.py maps them to HTTP in one place."""


class ServiceError(Exception):
    """A request that the current state refuses (400); the message says what is wrong."""


class Conflict(ServiceError):
    """A request that lost a race or came too late (409): already decided, held by someone else."""


class Forbidden(ServiceError):
    """The caller's role does not allow this (403)."""


class NotFound(ServiceError):
    """What the request names does not exist (404)."""


class SecretNotFound(NotFound):
    """No secret of that name in the tenant."""


class SecretUnreadable(ServiceError):
    """A stored secret does not decrypt: its ciphertext was made for another tenant or name, was altered,
    or was encrypted under another master key. The message names the secret, never its value."""
