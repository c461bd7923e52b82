"""Copy DuckDB's spatial extension from the duckdb-extension-spatial wheel to where DuckDB looks.

The BigQuery emulator (bqemulator) loads DuckDB's `spatial` extension; DuckDB would download it on
first use. The image must work offline, so the extension is installed at build time into
$HOME/.duckdb/extensions/<duckdb version>/<platform>/, the same thing `pulse dev up` does
(src/pulse_dev/services.py, `_bq_home`). The platform comes from DuckDB itself (linux_amd64,
linux_arm64, ...), so the image builds on either architecture.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import duckdb
import duckdb_extension_spatial

version = "v" + duckdb.__version__
platform = duckdb.execute("PRAGMA platform").fetchone()[0]
pkg = Path(duckdb_extension_spatial.__file__).parent
src = pkg / "extensions" / version / "spatial.duckdb_extension"
if not src.exists():
    found = sorted(pkg.rglob("spatial.duckdb_extension"))
    if not found:
        sys.exit(f"duckdb-extension-spatial ships no spatial.duckdb_extension under {pkg}")
    src = found[0]
target = Path(os.environ["HOME"]) / ".duckdb" / "extensions" / version / platform / "spatial.duckdb_extension"
target.parent.mkdir(parents=True, exist_ok=True)
shutil.copy2(src, target)

# Prove it loads without the network.
con = duckdb.connect()
con.execute("SET autoinstall_known_extensions = false")
con.execute("LOAD spatial")
print(f"spatial extension {version}/{platform} installed at {target}")
