"""The database under the history and the job records: SQLite in the workspace (one machine, the default), or
PostgreSQL when `EASEL_DATABASE_URL` names one (a cluster, whose ingress replicas share jobs and history).

Both speak the same SQL here, written with `?` placeholders; each keeps its own numbered migrations and runs them
once, in order, each in one transaction with the bump of its schema version."""

from __future__ import annotations

import abc
import sqlite3
import threading
from pathlib import Path
from typing import Any

# The job records, the same in both (migrations 2 and 3).
_JOBS = [
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        created TEXT NOT NULL,
        updated TEXT NOT NULL,
        state TEXT NOT NULL,
        step INTEGER NOT NULL DEFAULT 0,
        total_steps INTEGER NOT NULL DEFAULT 0,
        request TEXT NOT NULL,
        image_ids TEXT NOT NULL DEFAULT '[]',
        error TEXT
    );
    CREATE INDEX jobs_state ON jobs(state);
    """,
    """
    ALTER TABLE jobs ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]';
    """,
]

# SQLite: the version is PRAGMA user_version.
SQLITE_MIGRATIONS = [
    """
    CREATE TABLE generations (
        id TEXT PRIMARY KEY,
        created TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt TEXT NOT NULL,
        negative_prompt TEXT,
        seed INTEGER,
        width INTEGER,
        height INTEGER,
        steps INTEGER,
        guidance REAL,
        path TEXT,
        parameters TEXT NOT NULL
    );
    CREATE INDEX generations_created ON generations(created);
    """,
    *_JOBS,
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE engines (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, seen REAL NOT NULL);
    """,
    """
    ALTER TABLE jobs ADD COLUMN preview BLOB;
    """,
    """
    ALTER TABLE jobs ADD COLUMN webhook TEXT;
    """,
]

# PostgreSQL: the same tables (64-bit seeds, a sequence for the newest-first order); the version is in easel_schema.
POSTGRES_MIGRATIONS = [
    """
    CREATE TABLE generations (
        id TEXT PRIMARY KEY,
        seq BIGSERIAL,
        created TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt TEXT NOT NULL,
        negative_prompt TEXT,
        seed BIGINT,
        width INTEGER,
        height INTEGER,
        steps INTEGER,
        guidance DOUBLE PRECISION,
        path TEXT,
        parameters TEXT NOT NULL
    );
    CREATE INDEX generations_created ON generations(created);
    """,
    *_JOBS,
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE engines (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
                          seen DOUBLE PRECISION NOT NULL);
    """,
    """
    ALTER TABLE jobs ADD COLUMN preview BYTEA;
    """,
    """
    ALTER TABLE jobs ADD COLUMN webhook TEXT;
    """,
]


class Database(abc.ABC):
    """One connection shared by every thread, each statement in autocommit. `errors` are the driver's errors."""

    errors: tuple[type[BaseException], ...] = ()
    newest_first = ""  # the ORDER BY of the history's newest rows
    shared = False  # several servers may use it at once (a cluster's replicas)

    @abc.abstractmethod
    def execute(self, sql: str, args: tuple | list = ()) -> int:
        """Run a statement; the number of rows it changed."""

    @abc.abstractmethod
    def query(self, sql: str, args: tuple | list = ()) -> list[dict[str, Any]]:
        """Run a query; its rows."""

    def query_one(self, sql: str, args: tuple | list = ()) -> dict[str, Any] | None:
        rows = self.query(sql, args)
        return rows[0] if rows else None


class SqliteDatabase(Database):
    """SQLite in WAL mode, one connection for every thread (SQLite's serialized mode, and one statement at a time):
    a server's open files stay fixed however many threads its web server starts."""

    errors = (sqlite3.Error,)
    newest_first = "created DESC, rowid DESC"

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._using = threading.Lock()
        self._migrate()

    def connect(self) -> sqlite3.Connection:
        if self._conn is None:
            with self._lock:
                if self._conn is None:
                    if sqlite3.threadsafety != 3:  # not serialized: one connection may not be shared
                        raise RuntimeError("Easel needs SQLite built thread-safe (serialized mode).")
                    conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                    conn.row_factory = sqlite3.Row
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                    self._conn = conn
        return self._conn

    def _migrate(self) -> None:
        conn = self.connect()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(SQLITE_MIGRATIONS[version:], start=version + 1):
            conn.executescript(f"BEGIN; {script} PRAGMA user_version = {number}; COMMIT;")

    def execute(self, sql: str, args: tuple | list = ()) -> int:
        conn = self.connect()
        with self._using:  # one statement at a time: Python's sqlite3 objects are not for concurrent use
            return conn.execute(sql, args).rowcount

    def query(self, sql: str, args: tuple | list = ()) -> list[dict[str, Any]]:
        conn = self.connect()
        with self._using:
            return [dict(row) for row in conn.execute(sql, args)]


class PostgresDatabase(Database):
    """PostgreSQL through psycopg 3 (the `easel[ray]` extra installs it). A connection that the server dropped is
    opened again once, on the next statement."""

    newest_first = "created DESC, seq DESC"
    shared = True
    _MIGRATION_LOCK = 0x6561_7365  # pg_advisory_xact_lock key: replicas starting together migrate one at a time

    def __init__(self, url: str):
        try:
            import psycopg
        except ImportError as exc:
            raise RuntimeError("EASEL_DATABASE_URL names PostgreSQL, which needs psycopg: pip install "
                               "'easel[ray]' (or 'psycopg[binary]').") from exc
        self._psycopg = psycopg
        self.errors = (psycopg.Error,)
        self.url = url
        self._conn = None
        self._lock = threading.Lock()
        self._migrate()

    def connect(self):
        with self._lock:
            if self._conn is None or self._conn.closed:
                from psycopg.rows import dict_row

                self._conn = self._psycopg.connect(self.url, autocommit=True, row_factory=dict_row)
            return self._conn

    def _migrate(self) -> None:
        conn = self.connect()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS easel_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM easel_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO easel_schema (version) VALUES (0)")
            version = row["version"] if row else 0
            for number, script in enumerate(POSTGRES_MIGRATIONS[version:], start=version + 1):
                conn.execute(script)
                conn.execute("UPDATE easel_schema SET version = %s", (number,))

    def _run(self, sql: str, args, fetch: bool):
        sql = sql.replace("%", "%%").replace("?", "%s")
        for attempt in (1, 2):
            conn = self.connect()
            try:
                cur = conn.execute(sql, args)
                return cur.fetchall() if fetch else cur.rowcount
            except self._psycopg.OperationalError:
                if attempt == 2 or not conn.closed:
                    raise

    def execute(self, sql: str, args: tuple | list = ()) -> int:
        return self._run(sql, args, fetch=False)

    def query(self, sql: str, args: tuple | list = ()) -> list[dict[str, Any]]:
        return self._run(sql, args, fetch=True)


def open_database(target: Path | str) -> Database:
    """PostgreSQL for a `postgresql://` (or `postgres://`) URL, SQLite for a file path."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(text)
    return SqliteDatabase(Path(target))
