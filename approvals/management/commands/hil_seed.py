import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import Role, Tenant
from accounts.services import api_token_create, membership_set, totp_demo_device, totp_secret, user_ensure
from agents.models import ModelEndpoint
from agents.services import MODEL_FIELDS, endpoint_save, profile_save
from approvals.models import CannedReply
from tools.services import secret_set
from workflows import services
from workflows.models import Workflow

DEMO_YAML = settings.BASE_DIR / "workflows" / "demo" / "customer_support.yaml"
PASSWORD = os.environ.get("HIL_DEMO_PASSWORD", "hil-demo-password")


NOT_DEMO = ("hil_seed creates a superuser with a known password, so it runs only in demo mode: without "
            "HIL_SECRET_KEY on the embedded database (make run), or with HIL_DEMO=1. In production, create "
            "an admin with `manage.py createsuperuser`.")


class Command(BaseCommand):
    help = "Seed the demo tenant (users, tokens, the customer_support workflow) and print how to try it."

    def add_arguments(self, parser):
        parser.add_argument("--base-url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")

    @transaction.atomic
    def handle(self, *args, base_url, **options):
        if not settings.HIL_DEMO:
            raise CommandError(NOT_DEMO)
        tenant, _ = Tenant.objects.get_or_create(slug="demo", defaults={"name": "Demo shop"})
        operator = user_ensure(username="operator", password=PASSWORD, is_staff=True, is_superuser=True)
        membership_set(tenant=tenant, user=operator, role=Role.OPERATOR)
        alice, bob = (user_ensure(username=name, password=PASSWORD) for name in ("alice", "bob"))
        for agent in (alice, bob):
            membership_set(tenant=tenant, user=agent, role=Role.AGENT)

        workflow = Workflow.objects.filter(tenant=tenant, slug="customer_support").first()
        workflow = workflow or services.workflow_create(tenant=tenant, slug="customer_support", name="Customer support")
        spec_yaml = DEMO_YAML.read_text()
        live = workflow.live_version
        if live is None or live.spec_yaml != spec_yaml:
            version = services.workflow_version_create(workflow=workflow, spec_yaml=spec_yaml, actor=operator)
            services.workflow_version_publish(version=version, actor=operator)

        models = _demo_models(tenant, actor=operator)
        keys = {f"{user.username}_key": totp_secret(totp_demo_device(user=user)) for user in (operator, alice, bob)}
        CannedReply.objects.get_or_create(tenant=tenant, title="Greeting", defaults={
            "text": "Hi, thanks for waiting. I'm looking at your case now."})
        CannedReply.objects.get_or_create(tenant=tenant, title="Refund sent", defaults={
            "text": "Your refund is on its way: it shows on your statement within 5 working days."})

        # New tokens each time, and the ones printed before keep working: they are stored hashed, so
        # they cannot be printed again, and revoking them would break what a newcomer copied last run.
        self.stdout.write(TRY_IT.format(
            base=base_url, password=PASSWORD, token=api_token_create(tenant=tenant, user=operator, name="demo")[1],
            alice=api_token_create(tenant=tenant, user=alice, name="demo-alice")[1], **keys) + models)


def _demo_models(tenant: Tenant, *, actor) -> str:
    """With HIL_DEMO_LLM_URL (`HIL_DEMO_LLM=local make run` starts the local demo model): the endpoint
    `local-demo` there, and the profiles fast, balanced and powerful on its model. Without it, that endpoint is
    disabled, if an earlier run made it, so that the demo answers offline. Says which, to be printed."""
    url = os.environ.get("HIL_DEMO_LLM_URL")
    endpoint = ModelEndpoint.objects.filter(tenant=tenant, name="local-demo").first()
    if not url:
        if endpoint and endpoint.enabled:
            endpoint_save(tenant=tenant, name=endpoint.name, base_url=endpoint.base_url, enabled=False,
                          api_key_secret=endpoint.api_key_secret, models=list(endpoint.models.values(*MODEL_FIELDS)),
                          actor=actor)
        return ("\nModels: none, so the offline keyword stand-in answers (not an LLM). HIL_DEMO_LLM=local make "
                "run starts a local demo model; or add your endpoint in the admin (README: To try the demo with a "
                "model).\n")
    secret_set(tenant=tenant, name="local-demo-key", value=os.environ["HIL_DEMO_LLM_KEY"], actor=actor)
    endpoint_save(tenant=tenant, name="local-demo", base_url=url, api_key_secret="local-demo-key", actor=actor, models=[
        {"model": "hil-local-chat", "context_window": 16_000, "input_price": "0.15", "output_price": "0.60",
         "supports_json_schema": True}])
    for profile in ("fast", "balanced", "powerful"):
        profile_save(tenant=tenant, name=profile, entries=[("local-demo", "hil-local-chat")], actor=actor)
    return (f"\nModels: profiles fast, balanced and powerful call the local demo model at {url} over HTTP (keywords "
            "behind the OpenAI API, not an LLM); each call is in Admin > LLM calls.\n")


TRY_IT = """
HIL demo tenant 'demo' is ready.
  Console: {base}/console/   alice and bob (human agents), operator (also the admin); password {password}
           then a code from the user's authenticator: add their key to an authenticator app, or print it now
           with `.venv/bin/python -m accounts.totp <key>`.  Keys: alice {alice_key}  bob {bob_key}  operator {operator_key}
  Admin:   {base}/admin/   as operator, with the same two factors
  API:    {base}/api/docs/
  Token (operator): {token}
  Token (alice):    {alice}

Try it (needs curl and python3):
  export HIL={base}/api/v1 TOKEN={token} ALICE={alice}
  api() {{ curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; echo; }}
  export CONV=$(api -X POST $HIL/conversations/ -d '{{"workflow":"customer_support"}}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["id"])')

  # 1. A reply: a small refund (order 1 is 1.98) runs straight through to FINISH.
  api -X POST $HIL/conversations/$CONV/messages/ -d '{{"text":"Please refund order 1","turn_id":"t1"}}'
  sleep 1; api $HIL/conversations/$CONV/messages/

  # 2. An approval: order 5 is 13.86, over the threshold; the run waits for a human.
  REFUND_RUN=$(api -X POST $HIL/conversations/$CONV/messages/ -d '{{"text":"I want my money back for order 5","turn_id":"t2"}}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["run"]["id"])')
  # the pending approval of that run, once the run has reached its approval node (10 s at most)
  for try in $(seq 20); do APPROVAL=$(api "$HIL/approvals/?status=pending" | python3 -c 'import sys,json;print([a["id"] for a in json.load(sys.stdin)["results"] if a["run"]==sys.argv[1]][0])' $REFUND_RUN 2>/dev/null) && break; sleep 0.5; done
  api $HIL/approvals/$APPROVAL/
  curl -s -X POST -H "Authorization: Bearer $ALICE" -H 'Content-Type: application/json' $HIL/approvals/$APPROVAL/decision/ -d '{{"decision":"approve","comment":"ok"}}'; echo
  sleep 1; api $HIL/conversations/$CONV/messages/

  # 3. A handover: something the workflow cannot handle goes to a human.
  api -X POST $HIL/conversations/$CONV/messages/ -d '{{"text":"Can I speak to a person?","turn_id":"t3"}}'
  sleep 1; TICKET=$(api "$HIL/handovers/?status=open" | python3 -c 'import sys,json,os;print([t["id"] for t in json.load(sys.stdin)["results"] if t["conversation"]==os.environ["CONV"]][0])')
  curl -s -X POST -H "Authorization: Bearer $ALICE" $HIL/handovers/$TICKET/claim/; echo
  curl -s -X POST -H "Authorization: Bearer $ALICE" -H 'Content-Type: application/json' $HIL/handovers/$TICKET/reply/ -d '{{"text":"Hi, Alice here. How can I help?"}}'; echo
  curl -s -X POST -H "Authorization: Bearer $ALICE" $HIL/handovers/$TICKET/return-to-ai/; echo

  # Every step, decision and outcome is an event (or watch them live: .../events/stream/):
  RUN=$(api $HIL/conversations/$CONV/messages/ | python3 -c 'import sys,json;print([m["run"] for m in json.load(sys.stdin)["results"] if m["run"]][-1])')
  api $HIL/runs/$RUN/events/
"""
