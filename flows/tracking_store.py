"""A local SQLite MLflow store that commands started together in one folder can share.

MLflow creates and migrates a new SQLite store on first use, without a lock: three commands
started at once in a new folder each run the migrations, collide, and can leave alembic's scratch
tables (`_alembic_tmp_experiments`, ...) and a half-migrated schema that fails every later command.
Here one process at a time opens the store (an exclusive `flock` on `<db>.lock` beside it), so
exactly one creates and migrates it; the others open a finished store. A store broken that way
before this lock existed holds nothing (MLflow refuses to log into an unfinished schema): it is
recreated. Any other store that cannot be opened is reported with the file and what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from lmforge.errors import LmforgeError

T = TypeVar("T")
# Alembic's batch migrations on SQLite copy a table into `_alembic_tmp_<table>`, drop the
# original and rename the copy; an interrupted one leaves the copy behind.
SCRATCH_PREFIX = "_alembic_tmp_"
# Rows MLflow's own migrations and first start write, which a store that never recorded
# anything still holds.
SEED_ROWS = {"alembic_version": None, "workspaces": None, "experiments": "name = 'Default'"}


class TrackingStoreError(LmforgeError):
    """A local MLflow store (SQLite file) cannot be opened or created."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for anything else (a server)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == f"{prefix}:memory:":
        return None
    return Path(uri.removeprefix(prefix))


@contextlib.contextmanager
def store_lock(db: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<db>.lock` (waits for the process holding it)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, even on a crash
        yield


def open_sqlite_store(db: Path, open_store: Callable[[], T]) -> T:
    """Run `open_store` (which creates, migrates or just opens the store in `db`) while no other
    process does, after removing a store left broken and empty by an interrupted creation.

    Raises TrackingStoreError naming `db` when the store cannot be opened: a broken store that
    holds runs, or a migration that fails.
    """
    with store_lock(db):
        if db.is_file() and scratch_tables(db):
            if not holds_nothing(db):
                raise TrackingStoreError(
                    f"MLflow store {db} was left half-migrated (leftover tables "
                    f"{', '.join(scratch_tables(db))}) and holds recorded data, so it is not "
                    f"recreated: move it aside with `mv {db} {db}.broken` (the next command "
                    "starts a new store; the old file stays readable with sqlite3)"
                )
            remove_database(db)
        try:
            return open_store()
        except (MlflowException, SQLAlchemyError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise TrackingStoreError(
                f"MLflow store {db} cannot be opened ({type(error).__name__}: {first_line}): "
                f"move it aside with `mv {db} {db}.broken` and rerun to start a new store"
            ) from error


def scratch_tables(db: Path) -> list[str]:
    """Alembic scratch tables in `db`: present only when a migration was interrupted."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? ESCAPE '\\'",
            (SCRATCH_PREFIX.replace("_", "\\_") + "%",),
        ).fetchall()
    return sorted(name for (name,) in rows)


def holds_nothing(db: Path) -> bool:
    """Whether `db` holds no row beyond what MLflow's migrations and first start write, in its
    tables or in scratch copies of them (which may hold a table's only copy)."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        tables = [name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )]
        for table in tables:
            seed = SEED_ROWS.get(table.removeprefix(SCRATCH_PREFIX), "")
            if seed is None:
                continue  # bookkeeping only
            condition = f" WHERE NOT ({seed})" if seed else ""
            query = f'SELECT EXISTS (SELECT 1 FROM "{table}"{condition})'
            if connection.execute(query).fetchone()[0]:
                return False
    return True


def remove_database(db: Path) -> None:
    for path in (db, *(db.with_name(db.name + suffix) for suffix in ("-journal", "-wal", "-shm"))):
        path.unlink(missing_ok=True)
