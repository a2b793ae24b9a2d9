# Written by hand (issue 15, bounded logs): only the log usage table, so that it stays apart from
# the other schema work on this app.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("workloads", "0003_arrays_dependencies"),
    ]

    operations = [
        migrations.CreateModel(
            name="WorkloadLogUsage",
            fields=[
                ("workload", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True,
                                                  related_name="log_usage", serialize=False,
                                                  to="workloads.workload")),
                ("head_last_seq", models.BigIntegerField(blank=True, null=True)),
                ("head_bytes", models.PositiveBigIntegerField(default=0)),
                ("tail_bytes", models.PositiveBigIntegerField(default=0)),
                ("dropped_bytes", models.PositiveBigIntegerField(default=0)),
                ("dropped_chunks", models.PositiveBigIntegerField(default=0)),
                ("next_seq", models.PositiveBigIntegerField(default=0)),
            ],
        ),
    ]
