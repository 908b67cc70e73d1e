import os
import shutil

import yaml

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import Role, Tenant
from accounts.services import api_token_create, membership_set, totp_demo_device, totp_secret, user_ensure
from agents.models import ModelEndpoint
from agents.services import MODEL_FIELDS, endpoint_save, profile_save
from analytics.models import WorkflowKpi
from approvals.models import CannedReply
from tools.datasources import data_source_save, sql_example_add
from tools.knowledge import document_upload, knowledge_source_create
from tools.models import DataSource, KnowledgeSource, SqlExample
from tools.services import secret_set
from workflows import services
from workflows.models import Workflow

DEMO = settings.BASE_DIR / "workflows" / "demo"
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

        for slug, name in (("customer_support", "Customer support"), ("store_analyst", "Store analyst")):
            demo_workflow(tenant, slug, name, actor=operator)
        demo_data(tenant, actor=operator)
        WorkflowKpi.objects.get_or_create(  # what the dashboard values a request the AI resolves at
            tenant=tenant, workflow=Workflow.objects.get(tenant=tenant, slug="customer_support"),
            defaults={"human_handling_minutes": 6, "human_hourly_cost_usd": 30})

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


def demo_workflow(tenant: Tenant, slug: str, name: str, *, actor) -> None:
    workflow = Workflow.objects.filter(tenant=tenant, slug=slug).first()
    workflow = workflow or services.workflow_create(tenant=tenant, slug=slug, name=name)
    spec_yaml = (DEMO / f"{slug}.yaml").read_text()
    live = workflow.live_version
    if live is None or live.spec_yaml != spec_yaml:
        version = services.workflow_version_create(workflow=workflow, spec_yaml=spec_yaml, actor=actor)
        services.workflow_version_publish(version=version, actor=actor)


def demo_data(tenant: Tenant, *, actor) -> None:
    """The store_analyst's sources: a copy of the Chinook database (the demo may delete from it, once approved),
    with curated example questions, and the store's policy documents (ingested by the worker)."""
    source = DataSource.objects.filter(tenant=tenant, name="chinook").first()
    if source is None:
        source = DataSource(tenant=tenant, name="chinook", engine=DataSource.Engine.SQLITE, location="chinook.sqlite",
                            description="The Chinook digital music store: customers, invoices, tracks, artists.",
                            column_tags={"Customer.Email": "pii", "Customer.Phone": "pii", "Customer.Fax": "hidden",
                                         "Employee.BirthDate": "hidden"})
        copy = source.folder() / "chinook.sqlite"
        copy.parent.mkdir(parents=True, exist_ok=True)
        if not copy.exists():
            shutil.copyfile(settings.HIL_ORDERS_DB, copy)
        data_source_save(source=source, actor=actor)
        for example in yaml.safe_load((DEMO / "store_analyst_examples.yaml").read_text()):
            sql_example_add(source=source, question=example["question"], sql_text=example["sql"],
                            origin=SqlExample.Origin.CURATED, actor=actor)
    docs = KnowledgeSource.objects.filter(tenant=tenant, name="store-docs").first() or knowledge_source_create(
        tenant=tenant, name="store-docs", description="The store's returns policy and FAQ.", actor=actor)
    for path in sorted((DEMO / "knowledge").iterdir()):
        document_upload(source=docs, title=path.name, media_type="text/markdown", data=path.read_bytes(), actor=actor)


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

  # 4. The store analyst answers from the store's data (SQL, read-only) and its documents (cited passages):
  export DATA=$(api -X POST $HIL/conversations/ -d '{{"workflow":"store_analyst"}}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["id"])')
  ask() {{ api -X POST $HIL/conversations/$DATA/messages/ -d "$(python3 -c 'import json,sys;print(json.dumps({{"text":sys.argv[1],"turn_id":sys.argv[2]}}))' "$1" "$2")" >/dev/null; for try in $(seq 60); do api $HIL/conversations/$DATA/messages/ | python3 -c 'import sys,json;m=json.load(sys.stdin)["results"][-1];print(m["text"]) if m["role"]=="ai" else sys.exit(1)' 2>/dev/null && break; sleep 0.5; done; }}
  ask "How many customers do we have in Canada?" a1
  ask "What are our total sales per country?" a2
  ask "What was our revenue each year?" a3
  ask "What does your returns policy say about opened items?" a4
  # A delete waits for an operator's approval, which shows the SQL and the rows it would delete:
  api -X POST $HIL/conversations/$DATA/messages/ -d '{{"text":"Delete the customers from Brazil","turn_id":"a5"}}'
  for try in $(seq 20); do DELETE=$(api "$HIL/approvals/?status=pending" | python3 -c 'import sys,json;print([a["id"] for a in json.load(sys.stdin)["results"] if a["node_id"]=="ask_data"][0])' 2>/dev/null) && break; sleep 0.5; done
  api $HIL/approvals/$DELETE/ | python3 -c 'import sys,json;d=json.load(sys.stdin)["preview"]["dry_run"];print(d["sql"],"->",d["rows_affected"],"rows:",[r[1]+" "+r[2] for r in d["rows"]])'
  api -X POST $HIL/approvals/$DELETE/decision/ -d '{{"decision":"approve"}}'; sleep 1; api $HIL/conversations/$DATA/messages/ | python3 -c 'import sys,json;print(json.load(sys.stdin)["results"][-1]["text"])'

  # Every step, decision and outcome is an event (or watch them live: .../events/stream/):
  RUN=$(api $HIL/conversations/$CONV/messages/ | python3 -c 'import sys,json;print([m["run"] for m in json.load(sys.stdin)["results"] if m["run"]][-1])')
  api $HIL/runs/$RUN/events/
"""
