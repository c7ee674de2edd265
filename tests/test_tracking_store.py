"""The local MLflow store (`<work_dir>/mlflow.db`): commands started together in a new folder share
it, and a store left broken is recreated when it holds nothing, else reported with what to do."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from lmforge.flows import tracking
from lmforge.flows.tracking_store import TrackingStoreError

LOG_ONE_RUN = """
import sys, time
from pathlib import Path
import mlflow
from lmforge.flows.tracking import configure_tracking

folder, ready, go = map(Path, sys.argv[1:])
ready.touch()
while not go.exists():  # the barrier: every process configures tracking at the same moment
    time.sleep(0.005)
configure_tracking(folder)
with mlflow.start_run(run_name=ready.name):
    mlflow.log_metric("loss", 1.0)
"""


@pytest.fixture
def local_store(monkeypatch):
    """configure_tracking with no MLFLOW_TRACKING_URI, leaving MLflow's global URI as it was."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_configured_uri", None)
    previous = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_three_commands_started_together_in_a_new_folder_all_log_their_run(tmp_path):
    folder, go = tmp_path / "work", tmp_path / "go"
    ready = [tmp_path / f"command-{i}" for i in range(3)]
    env = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "PATH": "/usr/bin:/bin"}
    commands = [
        subprocess.Popen([sys.executable, "-c", LOG_ONE_RUN, str(folder), str(r), str(go)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in ready
    ]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = [command.communicate(timeout=120)[0] for command in commands]
    assert [command.returncode for command in commands] == [0, 0, 0], outputs
    with sqlite3.connect(folder / "mlflow.db") as db:
        names = sorted(name for (name,) in db.execute("SELECT name FROM runs"))
    assert names == ["command-0", "command-1", "command-2"]


@pytest.fixture(scope="module")
def fresh_store(tmp_path_factory) -> Path:
    """An MLflow store just created by MLflow itself: its schema and its Default experiment."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db = tmp_path_factory.mktemp("fresh") / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{db}", str(db.parent / "artifacts"))
    return db


def half_migrated_copy(fresh_store: Path, folder: Path) -> Path:
    """What an interrupted creation leaves: alembic's scratch copy of `experiments` beside the
    table and a schema version behind MLflow's."""
    from alembic.script import ScriptDirectory

    migrations = ScriptDirectory(str(Path(mlflow.__file__).parent / "store" / "db_migrations"))
    previous = migrations.get_revision(migrations.get_current_head()).down_revision
    folder.mkdir()
    db = folder / "mlflow.db"
    shutil.copy(fresh_store, db)
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE _alembic_tmp_experiments AS SELECT * FROM experiments")
        connection.execute("UPDATE alembic_version SET version_num = ?", (previous,))
    return db


def test_a_half_migrated_store_that_holds_nothing_is_recreated(fresh_store, tmp_path, local_store):
    db = half_migrated_copy(fresh_store, tmp_path / "work")
    tracking.configure_tracking(db.parent)
    with mlflow.start_run(run_name="after-repair"):
        mlflow.log_metric("loss", 1.0)
    with sqlite3.connect(db) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
        runs = [name for (name,) in connection.execute("SELECT name FROM runs")]
    assert not any(name.startswith("_alembic_tmp_") for name in tables)
    assert runs == ["after-repair"]


def test_a_half_migrated_store_that_holds_data_is_kept_and_named_with_what_to_do(
    fresh_store, tmp_path, local_store
):
    db = half_migrated_copy(fresh_store, tmp_path / "work")
    with sqlite3.connect(db) as connection:
        connection.execute(
            "INSERT INTO experiments (name, lifecycle_stage) VALUES ('mine', 'active')"
        )
    before = db.read_bytes()
    with pytest.raises(TrackingStoreError) as refused:
        tracking.configure_tracking(db.parent)
    assert str(db) in str(refused.value) and "_alembic_tmp_experiments" in str(refused.value)
    assert f"mv {db} {db}.broken" in str(refused.value)
    assert db.read_bytes() == before


def test_a_store_that_cannot_be_migrated_is_reported_not_a_traceback(
    fresh_store, tmp_path, local_store
):
    (tmp_path / "work").mkdir()
    db = tmp_path / "work" / "mlflow.db"
    shutil.copy(fresh_store, db)
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'from-another-mlflow'")
    with pytest.raises(TrackingStoreError, match=f"MLflow store {db} cannot be opened .*`mv {db} "):
        tracking.configure_tracking(db.parent)
