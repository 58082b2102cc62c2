"""Restoring a backup set, and proving what was restored: shared by restore-drill and restore.

Verify before trusting: a set is read through its manifest only, every object is
checked before anything is restored, and what was restored is checked against the
manifest (row counts, large objects, the tables the applications need) before a drill
passes or a restore is swapped into place.

One module per concept:

- :mod:`~tasks.restore.backup_set`: loading a set's manifest (trusted or not) and
  checking its objects before a restore.
- :mod:`~tasks.restore.engine`: the engine interface (:class:`RestoreEngine`) the real
  restore goes through, and what restoring one component found.
- :mod:`~tasks.restore.pg_server`: the Postgres server restored onto (the stack's own,
  or a drill server apart), its databases, what it uses on disk.
- :mod:`~tasks.restore.postgres`: row counts, the ``restore-postgres`` task and the
  Postgres swap.
- :mod:`~tasks.restore.pg_restore`: running ``pg_restore`` on the dump (stream or
  download mode), the dump's sha256 checked on the way.
- :mod:`~tasks.restore.clickhouse`: RESTORE, waiting for it, reading and counting the
  restored tables, and the ClickHouse swap.
- :mod:`~tasks.restore.space`: room to restore, read from each engine (ClickHouse's
  ``system.disks``, Postgres's configured volume size less what it uses), checked
  before anything is written.
- :mod:`~tasks.restore.scratch`: a drill's scratch databases, dropped on the way out,
  and those a killed drill left behind.
- :mod:`~tasks.restore.swap`: the real restore: staging databases and the swap into
  place.
- :mod:`~tasks.restore.reports`: drill and restore reports.

Every name is re-exported here: import from ``tasks.restore``.
"""

from tasks.restore.backup_set import (
    ManifestOutcome,
    SetVerification,
    descriptor_files,
    load_backup_manifest,
    object_sizes,
    verify_set_objects,
)
from tasks.restore.clickhouse import (
    CH_POLL_S,
    CH_QUERY_TIMEOUT_S,
    CH_VERIFY_TIMEOUT_S,
    CHECKABLE_ENGINE,
    REQUIRED_CLICKHOUSE_TABLES,
    ClickHouseEngine,
    ClickHouseSource,
    ch_client,
    ch_databases,
    drop_ch_database,
    read_ch_tables,
    restore_clickhouse,
    run_ch_restore,
    wait_ch_restore,
)
from tasks.restore.engine import ComponentOutcome, EngineName, RestoreEngine
from tasks.restore.pg_restore import CHUNK, STDERR_TAIL, PostgresMode, restore_postgres_dump
from tasks.restore.pg_server import drill_server, pg_used_bytes
from tasks.restore.postgres import (
    PG_CONNECT_TIMEOUT_S,
    REQUIRED_POSTGRES_TABLES,
    PgServer,
    PostgresEngine,
    PostgresSource,
    count_pg_rows,
    create_pg_database,
    describe_drill_target,
    drop_pg_database,
    pg_database_exists,
    pg_databases,
    pg_large_objects,
    pg_server,
    restore_postgres,
    restore_tool,
)
from tasks.restore.postgres import _swap_pg as _swap_pg  # tests drive the Postgres swap
from tasks.restore.reports import (
    publish_drill_report,
    publish_restore_report,
    send_drill_summary,
)
from tasks.restore.scratch import (
    CleanupResult,
    ScratchNames,
    check_no_scratch_left,
    drill_slot_name,
    drop_orphan_scratch_databases,
    drop_scratch,
    ensure_drill_slot,
    one_drill_at_a_time,
    scratch_databases,
)
from tasks.restore.space import (
    SpaceCheck,
    check_restore_space,
    clickhouse_free_space,
    postgres_free_space,
    worker_free_space,
)
from tasks.restore.swap import (
    RestoredTarget,
    StagedRestore,
    TargetPlan,
    drop_staging,
    plan_restore_targets,
    restore_engines,
    stage_clickhouse_restore,
    stage_postgres_restore,
    swap_into_place,
)

__all__ = [
    "CHECKABLE_ENGINE",
    "CHUNK",
    "CH_POLL_S",
    "CH_QUERY_TIMEOUT_S",
    "CH_VERIFY_TIMEOUT_S",
    "PG_CONNECT_TIMEOUT_S",
    "REQUIRED_CLICKHOUSE_TABLES",
    "REQUIRED_POSTGRES_TABLES",
    "STDERR_TAIL",
    "CleanupResult",
    "ClickHouseEngine",
    "ClickHouseSource",
    "ComponentOutcome",
    "EngineName",
    "ManifestOutcome",
    "PgServer",
    "PostgresEngine",
    "PostgresMode",
    "PostgresSource",
    "RestoreEngine",
    "RestoredTarget",
    "ScratchNames",
    "SetVerification",
    "SpaceCheck",
    "StagedRestore",
    "TargetPlan",
    "ch_client",
    "ch_databases",
    "check_no_scratch_left",
    "check_restore_space",
    "clickhouse_free_space",
    "count_pg_rows",
    "create_pg_database",
    "describe_drill_target",
    "descriptor_files",
    "drill_server",
    "drill_slot_name",
    "drop_ch_database",
    "drop_orphan_scratch_databases",
    "drop_pg_database",
    "drop_scratch",
    "drop_staging",
    "ensure_drill_slot",
    "load_backup_manifest",
    "object_sizes",
    "one_drill_at_a_time",
    "pg_database_exists",
    "pg_databases",
    "pg_large_objects",
    "pg_server",
    "pg_used_bytes",
    "plan_restore_targets",
    "postgres_free_space",
    "publish_drill_report",
    "publish_restore_report",
    "read_ch_tables",
    "restore_clickhouse",
    "restore_engines",
    "restore_postgres",
    "restore_postgres_dump",
    "restore_tool",
    "run_ch_restore",
    "scratch_databases",
    "send_drill_summary",
    "stage_clickhouse_restore",
    "stage_postgres_restore",
    "swap_into_place",
    "verify_set_objects",
    "wait_ch_restore",
    "worker_free_space",
]
