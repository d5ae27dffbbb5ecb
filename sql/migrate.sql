-- Migrates a table of rowcast v1, or the classic (id, content, flag) table of a PHP loop, to the
-- delivery order of rowcast v2. rowcast runs these itself at start when its user may; otherwise
-- it exits 1 printing them with your table's name. By hand: mariadb test < sql/migrate.sql
-- Online DDL: the table stays readable and writable meanwhile. Rows already at flag = 1 keep
-- seq NULL and are never sent again.
ALTER TABLE msg ADD COLUMN seq BIGINT UNSIGNED NULL DEFAULT NULL, ADD UNIQUE KEY seq (seq),
  ALGORITHM = INPLACE, LOCK = NONE;
CREATE TABLE IF NOT EXISTS rowcast_state (
  tbl VARCHAR(64) NOT NULL PRIMARY KEY,
  next_seq BIGINT UNSIGNED NOT NULL
) DEFAULT CHARSET = utf8mb4;
INSERT IGNORE INTO rowcast_state (tbl, next_seq) SELECT 'msg', COALESCE(MAX(seq), 0) + 1 FROM msg;
