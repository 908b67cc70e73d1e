"""Errors that services raise across app boundaries; hil_project/api.py maps them to HTTP in one place."""


class ServiceError(Exception):
    """A request that the current state refuses (400); the message says what is wrong."""


class Conflict(ServiceError):
    """A request that lost a race or came too late (409): already decided, held by someone else."""
