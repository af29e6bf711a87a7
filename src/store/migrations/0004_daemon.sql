-- The daemon's scrape-time queries: open findings counted by rule, severity and department
-- (with how many are overdue) read this index alone, without sorting the table.

CREATE INDEX findings_open_by_rule ON findings (state, rule, severity, department, due);
