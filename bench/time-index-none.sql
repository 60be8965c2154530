-- Schema v5 without its time indexes (the hot path as before v5): bench/capture-cost.sh BEFORE_SQL.
ALTER TABLE journal DROP KEY IF EXISTS by_time;
ALTER TABLE transfers DROP KEY IF EXISTS by_time;
