# Written by hand (issue 16, point 8): a trigram index that serves ?name= (name__icontains, which
# Django writes as UPPER(name::text) LIKE UPPER('%…%')) without reading every row. Postgres only:
# SQLite has no trigram indexes, and its tables are the embedded, small case.

from django.db import migrations

CREATE = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS workload_name_trgm ON workloads_workload USING gin (UPPER(name::text) gin_trgm_ops)",
]
DROP = ["DROP INDEX IF EXISTS workload_name_trgm"]


def run(statements):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            for statement in statements:
                schema_editor.execute(statement)
    return apply


class Migration(migrations.Migration):

    dependencies = [
        ("workloads", "0007_workload_list_rows"),
    ]

    operations = [migrations.RunPython(run(CREATE), run(DROP), elidable=False)]
