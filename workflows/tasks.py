from celery import shared_task

from . import engine


# Safe to run twice: a second delivery finds nothing to claim, and a redelivery after a
# worker died resumes from the last committed step.
@shared_task(acks_late=True, time_limit=3600, soft_time_limit=None)
def run_execute_task(run_id: str) -> None:
    engine.run_execute(run_id=run_id)


@shared_task(time_limit=60)
def runs_sweep_task() -> dict:
    return engine.runs_sweep()
