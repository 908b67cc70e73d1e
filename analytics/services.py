from django.db import IntegrityError, transaction

from core.errors import Conflict, ServiceError
from workflows.models import Run

from .models import Satisfaction


def satisfaction_record(*, conversation, score: int, comment: str = "") -> tuple[Satisfaction, bool]:
    """Record a customer's rating of the conversation, of its last turn that ended. Posting the same rating again
    returns the one recorded (False: not created); another rating of a rated conversation is a Conflict."""
    existing = Satisfaction.objects.filter(conversation=conversation).first()
    if existing is None:
        run = Run.objects.filter(conversation=conversation, finished_at__isnull=False).order_by("-finished_at").first()
        if run is None:
            raise ServiceError("the conversation has no finished turn to rate yet")
        try:
            with transaction.atomic():
                return Satisfaction.objects.create(tenant_id=conversation.tenant_id, conversation=conversation,
                                                   run=run, score=score, comment=comment), True
        except IntegrityError:  # rated at the same moment by another request
            existing = Satisfaction.objects.get(conversation=conversation)
    if (existing.score, existing.comment) != (score, comment):
        raise Conflict(f"the conversation was already rated {existing.score} at {existing.created_at:%Y-%m-%d %H:%M} "
                       "UTC; a rating is not changed")
    return existing, False
