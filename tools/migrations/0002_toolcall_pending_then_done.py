import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    """Calls are keyed by (run, node, n-th call) and written as pending before their effect."""

    dependencies = [
        ("tools", "0001_initial"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="toolcall", name="tool_call_once"),
        migrations.AddField(model_name="toolcall", name="decision", field=models.JSONField(
            blank=True, null=True, help_text="The human's decision, when the call needed one.")),
        migrations.AddField(model_name="toolcall", name="error", field=models.TextField(blank=True)),
        migrations.AddField(model_name="toolcall", name="executions", field=models.PositiveIntegerField(
            default=0, help_text="How many times the effect was started.")),
        migrations.AddField(model_name="toolcall", name="seq", field=models.PositiveIntegerField(
            default=1, help_text="The call's number within its node."), preserve_default=False),
        migrations.AddField(model_name="toolcall", name="status", field=models.CharField(
            choices=[("awaiting", "waiting for a human's decision"), ("pending", "started; outcome unknown until completed"),
                     ("succeeded", "Succeeded"), ("failed", "Failed"), ("rejected", "refused by a human")],
            default="succeeded", max_length=10), preserve_default=False),
        migrations.AddField(model_name="toolcall", name="updated_at", field=models.DateTimeField(
            auto_now=True, default=django.utils.timezone.now), preserve_default=False),
        migrations.AlterField(model_name="toolcall", name="idempotency_key", field=models.CharField(max_length=160)),
        migrations.AlterField(model_name="toolcall", name="result", field=models.JSONField(blank=True, null=True)),
        # Calls recorded before this were all done, each under its own step's key: number them in their node.
        migrations.RunSQL(
            "UPDATE tools_toolcall t SET seq = n.seq, executions = 1 FROM (SELECT id, row_number() OVER"
            " (PARTITION BY run_id, node_id ORDER BY id) AS seq FROM tools_toolcall) n WHERE t.id = n.id",
            migrations.RunSQL.noop),
        migrations.AddConstraint(
            model_name="toolcall",
            constraint=models.UniqueConstraint(fields=("run", "node_id", "seq"), name="tool_call_once"),
        ),
    ]
