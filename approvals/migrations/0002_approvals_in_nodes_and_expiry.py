from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("approvals", "0001_initial"),
        ("accounts", "0002_auditentry_approval_timeout"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.DeleteModel(name="AuditEntry")]),
        migrations.RemoveConstraint(model_name="approvalrequest", name="approval_once_per_node"),
        migrations.AddField(
            model_name="approvalrequest",
            name="call_key",
            field=models.CharField(blank=True, default="", max_length=160,
                                   help_text="For a tool call that waits inside a node: the call's idempotency key."),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="approvalrequest",
            name="on_expiry",
            field=models.CharField(choices=[("reject", "decide 'reject'"),
                                            ("HANDOVER", "hand the conversation over to a human")],
                                   default="reject", max_length=8),
        ),
        migrations.RunSQL("UPDATE approvals_approvalrequest SET expires_at = created_at + interval '1 day'"
                          " WHERE expires_at IS NULL", migrations.RunSQL.noop),
        migrations.AlterField(model_name="approvalrequest", name="expires_at", field=models.DateTimeField()),
        migrations.AlterField(
            model_name="approvalrequest",
            name="status",
            field=models.CharField(choices=[("pending", "Pending"), ("approved", "Approved"), ("rejected", "Rejected"),
                                            ("edited", "approved with edits"), ("expired", "Expired"),
                                            ("withdrawn", "withdrawn: the run was cancelled")],
                                   default="pending", max_length=10),
        ),
        migrations.AddConstraint(
            model_name="approvalrequest",
            constraint=models.UniqueConstraint(fields=("run", "node_id", "call_key"), name="approval_once_per_request"),
        ),
    ]
