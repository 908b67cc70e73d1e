from django.db import migrations


class Migration(migrations.Migration):
    """pgvector brought to the server's newest version where the database still has an older one (a `.data/pg` made
    with pgvector 0.6.2): 0.8 scans an HNSW index iteratively, so a search filtered by tenant and source finds its
    candidates inside the index scan. Nothing happens on a server that has no newer version."""

    dependencies = [("tools", "0006_chunk_embedding_storage_plain")]

    operations = [migrations.RunSQL("""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM pg_available_extensions
                       WHERE name = 'vector' AND installed_version <> default_version) THEN
                ALTER EXTENSION vector UPDATE;
            END IF;
        END $$""", migrations.RunSQL.noop)]
