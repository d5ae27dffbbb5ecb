-- The table rowcast streams from. rowcast applies this at start (the table name follows MSG_TABLE);
-- it is also fine to run it by hand: mariadb test < sql/schema.sql
CREATE TABLE IF NOT EXISTS msg (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  content MEDIUMTEXT NOT NULL,
  flag TINYINT NOT NULL DEFAULT 0,
  created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  KEY flag_id (flag, id)
) DEFAULT CHARSET = utf8mb4;
