-- The bureau's side of the rectification loop: what an operator decided about a waiver
-- request or a dispute (one decision per answer; the answer itself is never edited beyond its
-- state), and the kind of a stored exception: a `waiver` (approved, with an expiry) or an
-- `override` (a dispute upheld: the rule is off for that locus until an operator lifts it).
ALTER TABLE stored_exceptions ADD COLUMN kind TEXT NOT NULL DEFAULT 'waiver';
CREATE TABLE rectification_decisions (
    answer_id   TEXT PRIMARY KEY,       -- the waiver request or dispute decided
    at          TEXT NOT NULL,
    decision    TEXT NOT NULL,          -- approved | denied | closed | waived | overridden
    actor       TEXT NOT NULL,          -- who decided, as the audit names them
    note        TEXT,                   -- the operator's note to the department
    expires_on  TEXT                    -- approved, waived: the waiver's last day
);
