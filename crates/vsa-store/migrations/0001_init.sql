-- The audit trail: the same rows as the JSONL log, in order.
CREATE TABLE audit_events (
    seq        INTEGER PRIMARY KEY,      -- line number in the JSONL log, from 1
    ts         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    host       TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    commit_sha TEXT,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE
);
CREATE INDEX audit_events_ts ON audit_events (ts);
CREATE INDEX audit_events_host_target ON audit_events (host, target);

-- Small facts about a host: last applied commit, last apply time, ...
CREATE TABLE host_state (
    host  TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (host, key)
);

-- The outcome of the last apply per resource, for `status` and the dashboard.
CREATE TABLE resource_status (
    host       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL,            -- ok | failed
    detail     TEXT NOT NULL,
    commit_sha TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (host, kind, name)
);
