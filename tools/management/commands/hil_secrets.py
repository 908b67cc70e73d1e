import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core.errors import SecretUnreadable
from core.keys import master_key_from_text
from tools.services import secrets_rotate


class Command(BaseCommand):
    help = "Manage the tenants' secrets."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser(
            "rotate", help="Re-encrypt every secret of every tenant, in one transaction, under the master key in "
            "the environment variable HIL_NEW_MASTER_KEY (the base64 of 32 bytes; an environment variable, so "
            "that the key is in no shell history or process list). Run it with HIL_MASTER_KEY still the current "
            "key, then set HIL_MASTER_KEY to the new one and restart every process. Running it again is harmless.")

    def handle(self, *args, action, **options):
        text = os.environ.get("HIL_NEW_MASTER_KEY")
        if not text:
            raise CommandError("set HIL_NEW_MASTER_KEY to the new master key (the base64 of 32 bytes)")
        try:
            new_key = master_key_from_text(text)
        except ValueError as e:
            raise CommandError(f"HIL_NEW_MASTER_KEY: {e}") from None
        if new_key == settings.HIL_MASTER_KEY:
            raise CommandError("HIL_NEW_MASTER_KEY is the current master key (HIL_MASTER_KEY)")
        try:
            rotated, already = secrets_rotate(new_master_key=new_key)
        except SecretUnreadable as e:
            raise CommandError(str(e)) from None
        self.stdout.write(f"Re-encrypted {rotated} secrets under the new master key"
                          + (f" ({already} already were)" if already else "") + ".\n"
                          "Now set HIL_MASTER_KEY to the new key and restart every process.")
