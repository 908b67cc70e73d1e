"""The console in a real browser (Debian's chromium driven by Playwright) against Daphne and a real worker:
sign in with a TOTP code, tickets and approvals live, a claim race, reply, return to AI, an approval
decided with an edit, a closed tab's claim released, and a reconnect that loses no event."""

import os
import textwrap

import pytest
from django.db import connections
from playwright.sync_api import expect, sync_playwright

from accounts.models import Role
from accounts.services import membership_set, totp_demo_device, totp_secret, user_ensure
from accounts.totp import totp_code
from approvals.models import ApprovalRequest, DeskSeq, HandoverTicket
from approvals.management.commands.hil_seed import demo_data, demo_workflow
from approvals.tests.test_approvals import GATE
from workflows import services
from tools.knowledge import knowledge_search, knowledge_source_create
from tools.models import Document
from workflows.models import Message, Workflow
from workflows.tests.conftest import daphne, start_worker, wait  # noqa: F401  (fixtures)
from workflows.tests.specs import HANDS

pytestmark = pytest.mark.django_db(transaction=True)
CHROMIUM = "/usr/bin/chromium"  # Debian's, which `make test` installs; Playwright downloads no browser
PASSWORD = "console-password"
expect.set_options(timeout=30_000)  # a busy machine is slow, not wrong
SHOTS = os.environ.get("HIL_SCREENSHOTS")  # a folder to keep screenshots of the queue, a conversation, an approval


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls are still sync ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()
        connections.close_all()  # the test's own, opened while Playwright's loop ran (a context of their own)


@pytest.fixture
def console(daphne, browser, tenant):  # noqa: F811
    """console(username, role=agent) -> a page of a new browser context, signed in with password and TOTP code."""

    def sign_in(username, role=Role.AGENT):
        user = user_ensure(username=username, password=PASSWORD)
        membership_set(tenant=tenant, user=user, role=role)
        secret = totp_secret(totp_demo_device(user=user))
        page = browser.new_context(viewport={"width": 1360, "height": 820}).new_page()
        page.goto(f"{daphne.url}/console/")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", PASSWORD)
        page.press("input[name=password]", "Enter")
        page.fill("input[name=code]", totp_code(secret))
        page.press("input[name=code]", "Enter")
        expect(page.locator("#live")).to_have_text("live")
        return page

    return sign_in


def customer_says(tenant, spec, text, slug):
    workflow = services.workflow_create(tenant=tenant, slug=slug)
    version = services.workflow_version_create(workflow=workflow, spec_yaml=textwrap.dedent(spec))
    services.workflow_version_publish(version=version)
    conversation = services.conversation_start(tenant=tenant, workflow_slug=slug)
    services.message_post(conversation=conversation, text=text, turn_id="t1")
    return conversation


def shot(page, name):
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"))


def test_two_agents_work_a_handover_and_an_approval_live_with_the_keyboard(console, tenant, start_worker, wait):  # noqa: F811
    start_worker()
    alice, bob = console("alice"), console("bob")

    conversation = customer_says(tenant, HANDS, "I need a person", "support")
    for page in (alice, bob):  # appears without a reload
        expect(page.locator("#list .row")).to_have_count(1)
        expect(page.locator("#list .row .badge")).to_have_text("open")
    shot(alice, "queue")

    # Both open it; Alice claims first, and Bob is told who has it.
    for page in (alice, bob):
        page.keyboard.press("Enter")
        expect(page.locator("#claim")).to_be_enabled()
    alice.keyboard.press("c")
    expect(alice.locator("#holder")).to_have_text("You have it")
    bob.keyboard.press("c")
    expect(bob.locator("#holder")).to_have_text("alice has it")
    expect(bob.locator("#claim")).to_be_disabled()
    ticket = HandoverTicket.objects.get(conversation=conversation)
    assert ticket.assignee.username == "alice" and ticket.lease_expires_at is not None

    # Alice replies from the keyboard (the claim put her in the reply box); Bob sees her typing, then the reply.
    alice.keyboard.type("Hi, Alice here. How can I help?")
    expect(bob.locator("#typing")).to_have_text("alice is typing…")
    alice.keyboard.press("Control+Enter")
    expect(alice.locator(".msg.human p")).to_have_text("Hi, Alice here. How can I help?")
    expect(bob.locator(".msg.human")).to_have_count(1)
    assert Message.objects.get(conversation=conversation, role="human").text == "Hi, Alice here. How can I help?"
    expect(alice.locator("#reply")).to_be_focused()  # live updates never take the focus away
    shot(alice, "conversation")

    alice.keyboard.press("Escape")
    alice.keyboard.press("t")  # return to AI: gone from every queue
    for page in (alice, bob):
        expect(page.locator("#list .row")).to_have_count(0)
    wait(lambda: HandoverTicket.objects.get(pk=ticket.pk).status == "closed", what="the ticket closed")

    # An approval, decided with an edit that the form checks against the node's schema.
    customer_says(tenant, GATE, "refund please", "refunds")
    for page in (alice, bob):
        page.keyboard.press("2")
        expect(page.locator("#list .row")).to_have_count(1)
        page.keyboard.press("Enter")
    alice.keyboard.press("f")
    alice.keyboard.press("Control+a")
    alice.keyboard.type("75")  # over the schema's maximum of 50
    expect(alice.locator("#diff")).to_contain_text("amount")
    alice.keyboard.press("Escape")
    alice.keyboard.press("e")
    expect(alice.locator("#toast")).to_contain_text("Your edit")
    assert ApprovalRequest.objects.get().status == "pending"
    alice.keyboard.press("f")
    alice.keyboard.press("Control+a")
    alice.keyboard.type("15")
    expect(alice.locator("#diff")).to_have_text("amount: 20 → 15")
    shot(alice, "approval")
    alice.keyboard.press("Escape")
    alice.keyboard.press("e")
    for page in (alice, bob):  # removed at once everywhere
        expect(page.locator("#list .row")).to_have_count(0)
    expect(bob.locator("#decided")).to_have_text("Decided: edited by alice.")
    approval = ApprovalRequest.objects.get()
    assert (approval.status, approval.decided_payload) == ("edited", {"amount": 15})
    assert approval.decided_by.username == "alice"
    wait(lambda: Message.objects.filter(role="ai", text="paid 15").exists(), what="the run answered with the edit")


def test_a_closed_tab_gives_its_claim_back_to_the_queue(console, tenant, start_worker):  # noqa: F811
    start_worker()
    alice, bob = console("alice"), console("bob")
    customer_says(tenant, HANDS, "I need a person", "support")
    expect(alice.locator("#list .row")).to_have_count(1)
    alice.keyboard.press("Enter")
    expect(alice.locator("#claim")).to_be_enabled()
    alice.keyboard.press("c")
    expect(bob.locator("#list .badge")).to_have_text("alice has it")
    alice.context.close()  # no console renews the lease any more; the worker's sweep releases it
    expect(bob.locator("#list .badge")).to_have_text("open")
    assert HandoverTicket.objects.get().status == "open"


def test_a_reconnecting_console_gets_every_event_it_missed_once(console, tenant, start_worker, wait):  # noqa: F811
    start_worker()
    alice = console("alice")
    alice.evaluate("""() => {
        window.seen = [];
        const apply = applyDesk;
        applyDesk = (event) => { window.seen.push(event.seq); apply(event); };
        state.socket.onclose = null;  // stay away until told
        state.socket.close();
    }""")
    alice.wait_for_function("state.socket.readyState === WebSocket.CLOSED")
    for n in range(3):
        customer_says(tenant, HANDS, f"person please {n}", f"support-{n}")
    wait(lambda: DeskSeq.objects.filter(tenant=tenant, last_seq=3).exists(), what="three tickets opened")
    alice.evaluate("connect()")
    expect(alice.locator("#list .row")).to_have_count(3)
    customer_says(tenant, HANDS, "and one more", "support-live")
    expect(alice.locator("#list .row")).to_have_count(4)
    assert alice.evaluate("window.seen") == [1, 2, 3, 4]


def test_the_store_analyst_answers_in_the_console_with_tables_charts_and_cited_passages(console, tenant, start_worker,
                                                                                       wait):  # noqa: F811
    start_worker()
    demo_workflow(tenant, "store_analyst", "Store analyst", actor=None)
    demo_data(tenant, actor=None)
    wait(lambda: not Document.objects.exclude(status="ready").exists(), what="the worker ingested the documents")
    alice, olga = console("alice"), console("olga", Role.OPERATOR)

    alice.keyboard.press("3")
    expect(alice.locator("#list .row")).to_have_count(1)
    alice.keyboard.press("Enter")
    expect(alice.locator("#question")).to_be_focused()
    alice.keyboard.type("What are our total sales per country?")
    alice.keyboard.press("Control+Enter")
    expect(alice.locator(".msg.ai p")).to_contain_text("| USA | 523.06 |")
    expect(alice.locator("#results svg.chart rect")).to_have_count(24)  # a bar per country
    expect(alice.locator("#results tbody tr")).to_have_count(24)
    shot(alice, "sql-result")

    alice.keyboard.type("What does your returns policy say about opened items?")
    alice.keyboard.press("Control+Enter")
    expect(alice.locator(".msg.ai")).to_have_count(2)
    expect(alice.locator("#results mark")).to_contain_text("Opened items that are not faulty cannot be returned")
    shot(alice, "cited-passages")

    alice.keyboard.type("Delete the customers from Brazil")
    alice.keyboard.press("Control+Enter")
    olga.keyboard.press("2")
    expect(olga.locator("#list .row")).to_have_count(1)
    olga.keyboard.press("Enter")
    expect(olga.locator(".preview")).to_contain_text("Would change 5 row(s)")
    expect(olga.locator(".preview tbody tr")).to_have_count(5)
    shot(olga, "sql-write-approval")
    olga.keyboard.press("a")
    expect(alice.locator(".msg.ai p").last).to_have_text("Done: 5 row(s) changed.")


def test_an_operator_uploads_documents_and_watches_them_ingested(console, tenant, start_worker, tmp_path):  # noqa: F811
    start_worker()
    source = knowledge_source_create(tenant=tenant, name="store-docs", description="Policies and FAQ")
    shipping = tmp_path / "shipping.md"
    shipping.write_text("# Shipping\n\n## Abroad\n\nParcels to Norway take five to eight working days.\n")
    (tmp_path / "notes.exe").write_bytes(b"MZ\x90\x00")
    agent, olga = console("alice"), console("olga", Role.OPERATOR)
    expect(agent.locator("[data-tab=documents]")).to_have_count(0)  # the API lets only operators and admins

    olga.keyboard.press("4")
    expect(olga.locator("#list .row")).to_have_text("store-docsPolicies and FAQ")
    olga.keyboard.press("Enter")
    expect(olga.locator("#docs")).to_contain_text("No document yet.")
    olga.set_input_files("#upload", [str(shipping)])
    row = olga.locator("#docs tr", has_text="shipping.md")
    expect(row).to_contain_text("ready")  # queued, then ingested by the worker, the table following it
    expect(row).to_contain_text("1 / 1")
    document = Document.objects.get(source=source)
    assert (document.status, document.media_type, document.chunks_done) == ("ready", "text/markdown", 1)
    assert knowledge_search(tenant_id=tenant.id, query="how long does shipping to Norway take")[0]["document"] \
        == document.id
    shot(olga, "documents")

    olga.set_input_files("#upload", [str(shipping)])
    expect(olga.locator("#toast")).to_contain_text('already uploaded, as "shipping.md"')
    olga.set_input_files("#upload", [str(tmp_path / "notes.exe")])
    expect(olga.locator("#toast.error")).to_contain_text("notes.exe")
    expect(olga.locator("#docs tr")).to_have_count(1)
    assert Document.objects.filter(source=source).count() == 1


def test_a_team_lead_reads_the_dashboard_with_the_keyboard(console, tenant):
    import random
    from datetime import timedelta

    from django.utils import timezone

    from analytics import rollups
    from analytics.tests.factories import runs, versions

    now, rng = timezone.now(), random.Random(4)
    support, = versions(tenant, "support", 1)
    sales, = versions(tenant, "sales", 1)
    for version in (support, sales):  # live, as the console lists only those
        Workflow.objects.filter(pk=version.workflow_id).update(live_version=version)
    made = runs(support, [now - timedelta(minutes=3 + m) for m in range(30)], rng=rng, ms=(200, 4000))
    runs(sales, [now - timedelta(minutes=5 + m) for m in range(12)], rng=rng, ms=(200, 4000))
    rollups.rollup(now=now)
    lead = console("lena", Role.VIEWER)

    lead.keyboard.press("5")
    expect(lead.locator("#list .row")).to_have_count(3)  # the tenant as a whole, then each live workflow
    lead.keyboard.press("Enter")
    expect(lead.locator(".dashboard h2")).to_have_text("All workflows")
    expect(lead.locator(".tile", has_text="Runs")).to_have_text("Runs42")
    expect(lead.locator(".dashboard svg.chart")).to_have_count(5)
    lead.keyboard.press("[")
    expect(lead.locator(".ranges .on")).to_have_text("6h")
    assert lead.locator(".dashboard svg.chart polyline").count() >= 4
    shot(lead, "dashboard")

    lead.keyboard.press("j")
    lead.keyboard.press("j")
    lead.keyboard.press("Enter")  # sorted by slug: sales, support
    expect(lead.locator(".dashboard h2")).to_have_text("support")
    expect(lead.locator(".tile", has_text="Runs")).to_have_text(f"Runs{len(made)}")
    expect(lead.locator(".ranges .on")).to_have_text("6h")  # the range chosen stays
