"""Names every layer agrees on (the Flight SQL catalog, system schemas)."""

CATALOG = "mesh"
"""The one Flight SQL catalog; BI tools send ``mesh.domain.product`` three-part names."""

SYSTEM_SCHEMA = "information_schema"
