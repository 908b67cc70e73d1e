from django.db import models


class Stage(models.TextChoices):
    """How far a workflow is rolled out: its runs only watched (shadow), suggesting to a human, reviewed by one
    before they act, or acting on their own (auto)."""

    SHADOW = "shadow"
    SUGGEST = "suggest"
    REVIEW = "review"
    AUTO = "auto"
