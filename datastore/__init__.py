"""spanroute's versioned rollout datastore (Lance underneath).

>>> from datastore import Store, Lineage
>>> store = Store("runs/store")
>>> v = store.write(table, message="generate", lineage=Lineage(stage="generate", model="toy"))
"""

from datastore.diff import Diff
from datastore.lineage import Lineage, VersionInfo
from datastore.schema import ROLLOUT_SCHEMA, SCHEMA_VERSION
from datastore.store import NotAStoreError, Store, StoreError
from datastore.validate import DataError
from datastore.verify import VerifyReport

__all__ = [
    "DataError",
    "Diff",
    "Lineage",
    "NotAStoreError",
    "ROLLOUT_SCHEMA",
    "SCHEMA_VERSION",
    "Store",
    "StoreError",
    "VerifyReport",
    "VersionInfo",
]
