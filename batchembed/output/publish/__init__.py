"""The output as a Delta Lake table: one commit per publish over the shards already written.

``publish`` brings the Delta log to exactly the output's current files (adds and removes in one
commit, tagged with the caller's publish number); ``table_files`` and ``check_agrees`` read it back
for ``status`` and ``verify``; ``delta_storage_options`` translates a location for delta-rs.
``deltalake`` is imported only when a table is actually read or written.
"""

from batchembed.output.publish.delta import APP_ID, PublishRefused, check_agrees, publish, table_files
from batchembed.output.publish.files import DIMENSION_KEY, TableFile, delta_schema, footer_stats, read_table_file
from batchembed.output.publish.stores import delta_storage_options, table_uri

__all__ = [
    "APP_ID",
    "DIMENSION_KEY",
    "PublishRefused",
    "TableFile",
    "check_agrees",
    "delta_schema",
    "delta_storage_options",
    "footer_stats",
    "publish",
    "read_table_file",
    "table_files",
    "table_uri",
]
