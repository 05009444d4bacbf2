-- A generation its user deleted: gone from /history, its buttons refused and its image files
-- removed, while the row stays for the totals of /admin stats.

ALTER TABLE generations ADD COLUMN deleted_at REAL;
