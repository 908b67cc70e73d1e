import pytest
from django.db.models import RestrictedError

from accounts.models import Tenant
from approvals.models import HandoverTicket
from workflows.models import Conversation, Run, RunEvent, Workflow

pytestmark = pytest.mark.django_db


def test_deleting_a_tenant_deletes_all_its_rows_and_no_others(tenant, other_tenant, converse, drive):
    for owner in (tenant, other_tenant):
        _, run = converse(owner, "entry: a\nnodes:\n  - {id: a, agent: test_echo}\nedges:\n  - {from: a, to: HANDOVER}\n")
        drive(run)
    Tenant.objects.filter(pk=tenant.pk).delete()
    for model in (Workflow, Conversation, Run, RunEvent, HandoverTicket):
        assert not model.objects.filter(tenant_id=tenant.pk).exists()
        assert model.objects.filter(tenant_id=other_tenant.pk).exists()


def test_a_workflow_with_conversations_cannot_be_deleted_alone(tenant, converse):
    conversation, _ = converse(tenant)
    with pytest.raises(RestrictedError):
        conversation.workflow.delete()
