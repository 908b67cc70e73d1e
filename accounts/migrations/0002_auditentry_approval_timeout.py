import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    """The audit log moves here from approvals: every app records changes, and accounts is below them all."""

    dependencies = [
        ("accounts", "0001_initial"),
        ("approvals", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="tenant",
            name="approval_timeout_s",
            field=models.PositiveIntegerField(
                default=86400, help_text="How long an approval waits when its workflow sets no timeout (seconds)."),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="AuditEntry",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("action", models.CharField(max_length=60)),
                        ("object_type", models.CharField(max_length=60)),
                        ("object_id", models.CharField(max_length=64)),
                        ("old", models.JSONField(blank=True, null=True)),
                        ("new", models.JSONField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        ("actor", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL,
                                                    to=settings.AUTH_USER_MODEL)),
                        ("tenant", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+",
                                                     to="accounts.tenant")),
                    ],
                    options={"verbose_name_plural": "audit entries", "ordering": ["-created_at"],
                             "db_table": "approvals_auditentry"},
                ),
            ],
        ),
        migrations.AlterModelTable(name="auditentry", table=None),  # renames the table, rows and all
    ]
