from celery import shared_task

from . import engine


# Safe to run twice: a second delivery finds nothing to claim, and a redelivery after a worker
# died resumes from the last committed step. Its hard time limit is set per run when it is sent
# (engine.task_time_limit): the backstop that stops a step that overstays its deadline.
@shared_task(bind=True, acks_late=True)
def run_execute_task(self, run_id: str) -> None:
    engine.run_execute(run_id=run_id, queue=(self.request.delivery_info or {}).get("routing_key"),
                       time_limit=(self.request.timelimit or (None, None))[0])  # (hard, soft)


@shared_task(time_limit=60)
def runs_sweep_task() -> int:
    return engine.runs_sweep()
