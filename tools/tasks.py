from celery import shared_task

from . import knowledge
from .models import Document

# A 20 MB file of text is some 25,000 chunks: minutes of embedding on a CPU. The soft limit lets the ingestion
# record why it failed; the hard one is the backstop.
INGEST_SOFT_LIMIT_S = 25 * 60
INGEST_TIME_LIMIT_S = 30 * 60


# Safe to run twice: the ingestion claims its document, and one that died is taken over from the start.
@shared_task(bind=True, acks_late=True, soft_time_limit=INGEST_SOFT_LIMIT_S, time_limit=INGEST_TIME_LIMIT_S,
             max_retries=INGEST_TIME_LIMIT_S // int(knowledge.STALE_AFTER.total_seconds()) + 1)
def document_ingest_task(self, document_id: int) -> None:
    document = Document.objects.filter(id=document_id).only("status", "updated_at").first()
    if document is None or document.status in (Document.Status.READY, Document.Status.FAILED):
        return
    if document.status == Document.Status.INGESTING and not knowledge.ingestion_stale(document):
        # Another delivery is at it, or was until its worker died (as when this one is the redelivery of a task
        # whose worker was killed): come back when a dead one's claim has gone stale.
        raise self.retry(countdown=knowledge.STALE_AFTER.total_seconds())
    knowledge.document_ingest(document_id=document_id)
