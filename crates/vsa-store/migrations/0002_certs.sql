-- Certificates vsa issued (only these are ever deleted by vsa).
CREATE TABLE certs_issued (
    host      TEXT NOT NULL,
    domain    TEXT NOT NULL,
    serial    TEXT NOT NULL,
    not_after INTEGER NOT NULL,           -- seconds since the Unix epoch
    issued_at TEXT NOT NULL,
    PRIMARY KEY (host, domain)
);

-- ACME failures per domain, so a failing domain is retried with
-- exponential backoff, across restarts, and never on every apply.
CREATE TABLE acme_backoff (
    host          TEXT NOT NULL,
    domain        TEXT NOT NULL,
    failures      INTEGER NOT NULL,
    next_attempt  INTEGER NOT NULL,       -- milliseconds since the Unix epoch
    last_error    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (host, domain)
);
