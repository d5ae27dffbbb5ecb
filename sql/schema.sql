-- The table rowcast streams from, and its state table. rowcast applies this at start (the table
-- name follows MSG_TABLE); it is also fine to run it by hand: mariadb test < sql/schema.sql
-- flag = 0: pending; flag = 1: claimed (delivered). seq: the delivery order, set by the claim.
-- channel: the row's channel ('' for none), compared byte for byte; CHANNEL_COLUMN names it.
CREATE TABLE IF NOT EXISTS msg (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  content MEDIUMTEXT NOT NULL,
  flag TINYINT NOT NULL DEFAULT 0,
  created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  seq BIGINT UNSIGNED NULL DEFAULT NULL,
  channel VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
  KEY flag_id (flag, id),
  UNIQUE KEY seq (seq),
  KEY channel_seq (channel, seq)
) DEFAULT CHARSET = utf8mb4;

-- One row per streamed table: the next seq a claim hands out. Its row lock serialises claims.
CREATE TABLE IF NOT EXISTS rowcast_state (
  tbl VARCHAR(64) NOT NULL PRIMARY KEY,
  next_seq BIGINT UNSIGNED NOT NULL
) DEFAULT CHARSET = utf8mb4;
INSERT IGNORE INTO rowcast_state (tbl, next_seq) SELECT 'msg', COALESCE(MAX(seq), 0) + 1 FROM msg;
