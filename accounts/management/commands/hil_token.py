from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.models import Tenant
from accounts.services import api_token_create


class Command(BaseCommand):
    help = "Create an API token for a member of a tenant and print it (it is shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--user", required=True, help="username")
        parser.add_argument("--name", default="cli", help="a label for the token")

    def handle(self, *args, tenant, user, name, **options):
        tenant_obj = Tenant.objects.filter(slug=tenant).first()
        if tenant_obj is None:
            raise CommandError(f"no tenant '{tenant}'")
        user_obj = get_user_model().objects.filter(username=user).first()
        if user_obj is None:
            raise CommandError(f"no user '{user}'")
        try:
            _, raw = api_token_create(tenant=tenant_obj, user=user_obj, name=name)
        except ValueError as e:
            raise CommandError(str(e)) from None
        self.stdout.write(raw)
