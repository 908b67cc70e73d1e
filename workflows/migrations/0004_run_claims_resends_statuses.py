from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("workflows", "0003_restrict_not_protect"),
    ]

    operations = [
        migrations.AddField(
            model_name="run",
            name="claims",
            field=models.PositiveIntegerField(default=0, help_text="Workers that took the run on since it last made progress."),
        ),
        migrations.AddField(
            model_name="run",
            name="resend_at",
            field=models.DateTimeField(blank=True, null=True, help_text="When the sweeper may send its task again."),
        ),
        migrations.AddField(
            model_name="run",
            name="resends",
            field=models.PositiveIntegerField(default=0, help_text="Tasks the sweeper sent since the run was last queued."),
        ),
        migrations.AlterField(
            model_name="run",
            name="reason",
            field=models.TextField(blank=True, help_text="Why the run handed over, failed or was cancelled."),
        ),
        migrations.AlterField(
            model_name="run",
            name="status",
            field=models.CharField(choices=[("queued", "Queued"), ("held", "held behind the conversation's previous turn"),
                                            ("running", "Running"), ("waiting", "waiting for a human"), ("done", "Done"),
                                            ("failed", "failed, even on its failure path"), ("cancelled", "Cancelled")],
                                   default="queued", max_length=16),
        ),
    ]
